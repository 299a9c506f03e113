//go:build !race

package membership

import "time"

// deadBound is how long a killed member may take to be withdrawn everywhere: the documented figure.
const deadBound = 6 * time.Second
