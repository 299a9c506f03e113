package membership

import (
	"encoding/json"
	"fmt"
	"net/netip"

	"github.com/hashicorp/memberlist"
)

// Meta is what a member tells the others about itself, carried in memberlist's node metadata
// (at most memberlist.MetaMaxSize = 512 bytes, so the keys are short).
type Meta struct {
	Role     Role       `json:"r"`
	Node     string     `json:"n"`
	VTEP     netip.Addr `json:"t,omitzero"`
	GRPCAddr string     `json:"g,omitempty"`
	Version  string     `json:"v,omitempty"`
	// Leaving is set just before a graceful Leave, so that peers can tell LEFT from DEAD: memberlist
	// itself does not expose the difference.
	Leaving bool `json:"l,omitempty"`
}

func metaOf(c Config, leaving bool) Meta {
	return Meta{Role: c.Role, Node: c.Node, VTEP: c.VTEP, GRPCAddr: c.GRPCAddr, Version: c.Version, Leaving: leaving}
}

func encodeMeta(m Meta) ([]byte, error) {
	b, err := json.Marshal(m)
	if err != nil {
		return nil, fmt.Errorf("encode gossip metadata of %q: %w", m.Node, err)
	}
	if len(b) > memberlist.MetaMaxSize {
		return nil, fmt.Errorf("gossip metadata of %q is %d bytes, over memberlist's limit of %d", m.Node, len(b), memberlist.MetaMaxSize)
	}
	return b, nil
}

func decodeMeta(b []byte) (Meta, error) {
	var m Meta
	if err := json.Unmarshal(b, &m); err != nil {
		return Meta{}, fmt.Errorf("decode gossip metadata: %w", err)
	}
	return m, nil
}
