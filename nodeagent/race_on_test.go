//go:build race

package nodeagent

import "time"

// withdrawBound is how long a host that dies may take to be withdrawn by every peer in these tests:
// the target is under 2 s, but the race detector slows memberlist's processing and the agents'
// passes several times over, so the bound is looser under it (still well before DEAD at 4.2-4.6 s,
// which the test checks on its own).
const withdrawBound = 4 * time.Second
