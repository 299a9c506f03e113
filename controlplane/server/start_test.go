package server

import (
	"context"
	"errors"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TestFailedStartWritesNothing: a server that cannot bind one of its addresses fails before it starts
// etcd or any plugin (no data directory appears), and every listener of a failed start is released.
func TestFailedStartWritesNothing(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	pluginRan := false
	spy := func(context.Context, Host) (Extension, error) { pluginRan = true; return Extension{}, nil }
	for name, mod := range map[string]func(*Config){
		"listen in use":      func(c *Config) { c.Listen = busy.Addr().String() },
		"also-listen in use": func(c *Config) { c.Listen, c.AlsoListen = freePort(t), []string{busy.Addr().String()} },
	} {
		cfg := testConfig(t)
		cfg.DataDir = filepath.Join(t.TempDir(), "state")
		cfg.Plugins = []Plugin{spy}
		mod(&cfg)
		if s, err := New(ctx, cfg); err == nil {
			s.Close()
			t.Fatalf("%s: started", name)
		}
		if _, err := os.Stat(cfg.DataDir); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s: data dir %s: %v, want it never created", name, cfg.DataDir, err)
		}
		if pluginRan {
			t.Errorf("%s: a plugin was started", name)
		}
		if cfg.Listen == busy.Addr().String() {
			continue
		}
		if l, err := net.Listen("tcp", cfg.Listen); err != nil {
			t.Errorf("%s: %s not released: %v", name, cfg.Listen, err)
		} else {
			l.Close()
		}
	}

	// A failure after binding (a plugin refusing to start) releases the listeners too.
	cfg := testConfig(t)
	cfg.Listen = freePort(t)
	cfg.Plugins = []Plugin{func(context.Context, Host) (Extension, error) { return Extension{}, errors.New("plugin refuses") }}
	if s, err := New(ctx, cfg); err == nil {
		s.Close()
		t.Fatal("started with a failing plugin")
	}
	l, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		t.Fatalf("%s not released after a plugin failure: %v", cfg.Listen, err)
	}
	l.Close()
}

// revocationList is a list in force, as a plugin hands it over.
type revocationList string

func (l revocationList) InForce() (string, *big.Int, int) { return string(l), big.NewInt(1), 0 }

// The revocation list a plugin enforces reaches the plugins after it (the first one given wins),
// not those before it.
func TestRevocationsReachLaterPlugins(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	seen := map[string]RevocationList{}
	spy := func(name string, gives RevocationList) Plugin {
		return func(_ context.Context, h Host) (Extension, error) {
			seen[name] = h.Revocations
			return Extension{Revocations: gives}, nil
		}
	}
	cfg := testConfig(t)
	cfg.Listen = freePort(t)
	cfg.Plugins = []Plugin{spy("before", nil), spy("auth", revocationList("ca1")), spy("between", revocationList("ca2")), spy("after", nil)}
	s, err := New(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	if seen["before"] != nil || seen["auth"] != nil || seen["between"] != revocationList("ca1") || seen["after"] != revocationList("ca1") {
		t.Errorf("lists the plugins were given: %v; want none, none, ca1, ca1", seen)
	}
}
