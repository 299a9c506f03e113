//go:build !race

package nodeagent

import "time"

// withdrawBound is how long a host that dies may take to be withdrawn by every peer: the target is
// under 2 s (Down about a second after the kill: one probe interval to be probed, one to be
// suspected, two unanswered dials of 200 ms; the agent's pass after that), with a margin for a
// loaded machine.
const withdrawBound = 2500 * time.Millisecond
