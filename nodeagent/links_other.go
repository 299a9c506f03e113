//go:build !linux

package nodeagent

import (
	"context"
	"errors"
	"log/slog"
)

// NetlinkLinks is only available on Linux.
type NetlinkLinks struct {
	Logger *slog.Logger
}

// Run fails: there is no netlink here.
func (NetlinkLinks) Run(context.Context, func(string), func()) error {
	return errors.New("link watch needs Linux netlink")
}
