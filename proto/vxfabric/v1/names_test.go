package vxfabricv1

import (
	"regexp"
	"strings"
	"testing"
)

// The rule as the regular expression it replaces: the hand-written check must agree with it.
var nameRE = regexp.MustCompile(`^[a-z][a-z0-9-]{0,62}$`)

func TestValidName(t *testing.T) {
	for _, s := range []string{"a", "web-1", "a-", strings.Repeat("a", 63), "x0-9"} {
		if !ValidName(s) {
			t.Errorf("ValidName(%q) = false, want true", s)
		}
	}
	for _, s := range []string{"", "1a", "-a", "A", "aB", "a_b", "a.b", strings.Repeat("a", 64), "a\n", "é", "a b"} {
		if ValidName(s) {
			t.Errorf("ValidName(%q) = true, want false", s)
		}
	}
}

func FuzzValidName(f *testing.F) {
	for _, s := range []string{"a", "web-1", "", "1a", "a\x00", strings.Repeat("z", 64)} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if got, want := ValidName(s), nameRE.MatchString(s); got != want {
			t.Fatalf("ValidName(%q) = %v, the rule's expression says %v", s, got, want)
		}
	})
}
