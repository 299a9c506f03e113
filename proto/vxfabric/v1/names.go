package vxfabricv1

// NameRule says which names the API takes for tenants, networks, ports, nodes and VMs, in words for
// error messages.
const NameRule = "1-63 characters of a-z, 0-9 and '-', starting with a letter"

// ValidName reports whether s follows NameRule (a DNS label in lower case, never starting with a
// digit or '-'). The control plane, the agent and the CLI share it, so that a name one accepts is
// never refused by another.
func ValidName(s string) bool {
	if len(s) == 0 || len(s) > 63 || s[0] < 'a' || s[0] > 'z' {
		return false
	}
	for i := 1; i < len(s); i++ {
		if c := s[i]; !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}
