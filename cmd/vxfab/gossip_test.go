package main

import (
	"strings"
	"testing"

	vxfabricv1 "github.com/vxfabric/vxfabric/proto/vxfabric/v1"
)

// TestKeyringTableLeftBehind: gossip status names the members a rotation went on without, and says
// which of them have the current keyring since.
func TestKeyringTableLeftBehind(t *testing.T) {
	st := &vxfabricv1.GossipKeyringStatus{
		Managed: true, Revision: 7, LaggingNodes: []string{"h2", "h3", "server b"},
		Nodes: []*vxfabricv1.GossipNodeKeyring{{Node: "h1", KeyringRevision: 7}, {Node: "h2", KeyringRevision: 5}, {Node: "h3", KeyringRevision: 7}},
	}
	var b strings.Builder
	keyringTable(&b, st)
	if want := "h2, server b (had not confirmed a step in time; h3 current since)"; !strings.Contains(b.String(), want) {
		t.Errorf("gossip status:\n%s\nwant a Left behind line with %q", b.String(), want)
	}
	st.LaggingNodes = []string{"h3"}
	b.Reset()
	keyringTable(&b, st)
	if want := "none now (had not confirmed a step in time; h3 current since)"; !strings.Contains(b.String(), want) {
		t.Errorf("gossip status once h3 caught up:\n%s\nwant a Left behind line with %q", b.String(), want)
	}
}
