// Command release releases its own binary's pages and then runs code and reads data of all kinds,
// built in whatever mode the test asks for (position-independent, for one).
package main

import (
	"encoding/json"
	"fmt"
	"os"
	"regexp"
	"strings"

	"github.com/vxfabric/vxfabric/nodeagent/binpages"
)

// written is data changed at run time, before the release.
var written = []string{"before"}

func main() {
	written[0] = "changed at run time"
	before, after, err := binpages.Release()
	if err != nil {
		fmt.Fprintln(os.Stderr, "release:", err)
		os.Exit(1)
	}
	b, err := json.Marshal(map[string][]int{"a": {1, 2}})
	re := regexp.MustCompile(`^\d+ (KiB|MiB)$`)
	switch {
	case err != nil || string(b) != `{"a":[1,2]}`:
		fmt.Fprintf(os.Stderr, "json after the release: %s, %v\n", b, err)
		os.Exit(1)
	case written[0] != "changed at run time":
		fmt.Fprintf(os.Stderr, "data written before the release reads %q\n", written[0])
		os.Exit(1)
	case !re.MatchString("42 KiB") || strings.ToUpper("ok") != "OK":
		fmt.Fprintln(os.Stderr, "regexp or strings wrong after the release")
		os.Exit(1)
	}
	fmt.Println(before, after)
}
