//go:build race

package membership

import "time"

// deadBound is how long a killed member may take to be withdrawn everywhere in these tests: the
// documented figure is under 5 s (DEAD at 4.1-4.4 s), but the race detector slows memberlist's own processing several
// times over, so the bound is looser under it.
const deadBound = 7 * time.Second
