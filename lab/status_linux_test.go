package lab

import (
	"strings"
	"testing"
)

// lab status shows a revision not known (0) as "-": a host without ports has no desired revision,
// and right after a server restart no host has an applied one.
func TestStatusPrintUnknownRevisions(t *testing.T) {
	st := Status{Name: "t", Hosts: []HostStatus{
		{Name: "h1", Node: "ALIVE", Applied: 98},
		{Name: "h2", Node: "ALIVE", Desired: 87},
		{Name: "h3", Node: "ALIVE", Applied: 90, Desired: 87},
	}}
	var out strings.Builder
	st.Print(&out)
	want := map[string]string{"h1": "98/-", "h2": "-/87", "h3": "90/87"}
	for _, line := range strings.Split(out.String(), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 || want[f[0]] == "" {
			continue
		}
		if got := f[len(f)-1]; got != want[f[0]] {
			t.Errorf("host %s: APPLIED/DESIRED %q, want %q\n%s", f[0], got, want[f[0]], out.String())
		}
		delete(want, f[0])
	}
	if len(want) > 0 {
		t.Errorf("hosts missing from the status: %v\n%s", want, out.String())
	}
}
