package store

import (
	"errors"
	"fmt"

	vxfabricv1 "github.com/vxfabric/vxfabric/proto/vxfabric/v1"
)

// Sentinel errors. controlplane/api maps them to gRPC codes in one place; everything returned by this
// package that is not a transport error wraps one of them.
var (
	ErrNotFound           = errors.New("not found")
	ErrAlreadyExists      = errors.New("already exists")
	ErrFailedPrecondition = errors.New("failed precondition")
	// ErrStale: an expected_revision no longer matches the stored revision.
	ErrStale = fmt.Errorf("%w: revision changed", ErrFailedPrecondition)
	// ErrExhausted: no VNI or address left in a pool.
	ErrExhausted = errors.New("resource exhausted")
	// ErrInvalidArgument: a request that can never succeed as written.
	ErrInvalidArgument = errors.New("invalid argument")
	// ErrContention: too many concurrent writers won the same keys; the caller may retry.
	ErrContention = errors.New("too much contention, retry")

	// ErrVNITaken, ErrIPTaken and ErrMACTaken tell an allocator that its candidate lost and another
	// one may be tried (when the value was not requested by the user).
	ErrVNITaken = fmt.Errorf("%w: vni taken", ErrAlreadyExists)
	ErrIPTaken  = fmt.Errorf("%w: ip address taken", ErrAlreadyExists)
	ErrMACTaken = fmt.Errorf("%w: mac address taken", ErrAlreadyExists)
	// ErrIDTaken: a freshly generated random id collided (practically never); generate another.
	ErrIDTaken = fmt.Errorf("%w: id taken", ErrAlreadyExists)
	// ErrNodesChanged: a create checked against the node records at some revision failed because a
	// node record was written since; the caller reads the nodes again, checks again and retries.
	ErrNodesChanged = fmt.Errorf("%w: node records changed", ErrContention)
	// ErrRequestMismatch: a request_id was reused for a different resource or another request body.
	ErrRequestMismatch = fmt.Errorf("%w: request_id already used for another request", ErrFailedPrecondition)
)

// networkName is how messages name a network: tenant/name, never its internal id.
func networkName(n *vxfabricv1.Network) string { return n.Tenant + "/" + n.Name }
