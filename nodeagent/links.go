package nodeagent

import "context"

// LinkSource tells the agent when host interfaces appear or disappear.
//
// Run blocks until ctx ends. It calls changed(name) when an interface named name appears, disappears,
// is renamed (old and new names), goes up or down or changes master, or (a vxlan device of ours)
// loses an FDB or neighbour entry; and resync() when events may have been lost or an IPv4 address of
// the host came or went (the agent then reconciles everything). Both callbacks are called from Run's goroutine, must not block, and may be
// called for interfaces the agent does not care about.
type LinkSource interface {
	Run(ctx context.Context, changed func(name string), resync func()) error
}
