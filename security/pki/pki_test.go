package pki

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"errors"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func initDir(t *testing.T, dir string, nodes ...string) []FileResult {
	t.Helper()
	cfg := DefaultInit(dir)
	cfg.Nodes = nodes
	cfg.ServerNames = []string{"api.example"}
	cfg.ServerIPs = []net.IP{net.ParseIP("198.18.0.1")}
	res, err := Init(cfg)
	if err != nil {
		t.Fatalf("Init: %v", err)
	}
	return res
}

func created(res []FileResult) []string {
	var out []string
	for _, r := range res {
		if r.Created {
			out = append(out, filepath.Base(r.Path))
		}
	}
	return out
}

func TestInitCreatesVerifiableChainAndIdentities(t *testing.T) {
	dir := t.TempDir()
	initDir(t, dir, "h1", "h2")

	trust, err := NewTrust(filepath.Join(dir, CACertFile), nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		file  string
		usage x509.ExtKeyUsage
		want  Identity
	}{
		{ServerCert, x509.ExtKeyUsageServerAuth, Identity{}},
		{AdminCert, x509.ExtKeyUsageClientAuth, Identity{Kind: KindAdmin}},
		{NodeCertFile("h1"), x509.ExtKeyUsageClientAuth, Identity{Kind: KindNode, Name: "h1"}},
		{NodeCertFile("h2"), x509.ExtKeyUsageClientAuth, Identity{Kind: KindNode, Name: "h2"}},
	} {
		cert, err := readCert(filepath.Join(dir, tc.file))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := cert.Verify(x509.VerifyOptions{Roots: trust.Pool(), KeyUsages: []x509.ExtKeyUsage{tc.usage}}); err != nil {
			t.Errorf("%s does not verify against the CA: %v", tc.file, err)
		}
		if got := IdentityOf(cert); got != tc.want {
			t.Errorf("IdentityOf(%s) = %+v, want %+v", tc.file, got, tc.want)
		}
	}
	server, _ := readCert(filepath.Join(dir, ServerCert))
	for _, host := range []string{"localhost", "127.0.0.1", "api.example", "198.18.0.1"} {
		if err := server.VerifyHostname(host); err != nil {
			t.Errorf("server certificate does not cover %s: %v", host, err)
		}
	}
	// A node certificate must not be usable as a server certificate, nor the server's as a client's.
	node, _ := readCert(filepath.Join(dir, NodeCertFile("h1")))
	if _, err := node.Verify(x509.VerifyOptions{Roots: trust.Pool(), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err == nil {
		t.Error("node certificate verifies for server auth")
	}
	if _, err := server.Verify(x509.VerifyOptions{Roots: trust.Pool(), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err == nil {
		t.Error("server certificate verifies for client auth")
	}

	for _, f := range []string{CAKeyFile, ServerKey, AdminKey, NodeKeyFile("h1"), NodeKeyFile("h2"), GossipKeyFile} {
		st, err := os.Stat(filepath.Join(dir, f))
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm() != 0o600 {
			t.Errorf("%s mode %v, want 0600", f, st.Mode().Perm())
		}
	}
	key, err := ReadGossipKey(filepath.Join(dir, GossipKeyFile))
	if err != nil || len(key) != GossipKeySize {
		t.Errorf("gossip key: %d bytes, %v", len(key), err)
	}
}

func TestInitIsIdempotent(t *testing.T) {
	dir := t.TempDir()
	initDir(t, dir, "h1")
	before := map[string][]byte{}
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		before[e.Name()], _ = os.ReadFile(filepath.Join(dir, e.Name()))
	}

	if got := created(initDir(t, dir, "h1")); len(got) != 0 {
		t.Errorf("second run created %v, want nothing", got)
	}
	got := created(initDir(t, dir, "h1", "h3"))
	if len(got) != 1 || got[0] != NodeCertFile("h3") {
		t.Errorf("adding h3 created %v, want only %s", got, NodeCertFile("h3"))
	}
	for name, data := range before {
		now, _ := os.ReadFile(filepath.Join(dir, name))
		if !bytes.Equal(now, data) {
			t.Errorf("%s changed on a repeated init", name)
		}
	}
	// A new server SAN reissues only the server certificate.
	cfg := DefaultInit(dir)
	cfg.ServerNames = []string{"other.example"}
	res, err := Init(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if got := created(res); len(got) != 1 || got[0] != ServerCert {
		t.Errorf("new server name created %v, want only %s", got, ServerCert)
	}
}

func TestInitRefusesCAWithoutKey(t *testing.T) {
	dir := t.TempDir()
	initDir(t, dir)
	if err := os.Remove(filepath.Join(dir, CAKeyFile)); err != nil {
		t.Fatal(err)
	}
	before, _ := os.ReadFile(filepath.Join(dir, CACertFile))
	if _, err := Init(DefaultInit(dir)); err == nil {
		t.Fatal("Init replaced a CA whose key is missing")
	}
	after, _ := os.ReadFile(filepath.Join(dir, CACertFile))
	if !bytes.Equal(before, after) {
		t.Error("CA certificate was rewritten")
	}
}

func TestInitReissuesLeavesOfANewCA(t *testing.T) {
	dir := t.TempDir()
	initDir(t, dir, "h1")
	os.Remove(filepath.Join(dir, CACertFile))
	os.Remove(filepath.Join(dir, CAKeyFile))
	got := created(initDir(t, dir, "h1"))
	// The old CA's revocation list goes too: a new CA starts an empty one.
	want := map[string]bool{CACertFile: true, ServerCert: true, AdminCert: true, NodeCertFile("h1"): true, CRLFile: true}
	if len(got) != len(want) {
		t.Fatalf("created %v, want %v", got, want)
	}
	for _, g := range got {
		if !want[g] {
			t.Errorf("unexpected %s", g)
		}
	}
}

func TestInitValidate(t *testing.T) {
	for _, nodes := range [][]string{{"H1"}, {"1h"}, {""}, {"a/b"}, {"../x"}} {
		cfg := DefaultInit(t.TempDir())
		cfg.Nodes = nodes
		if _, err := Init(cfg); err == nil {
			t.Errorf("Init accepted node names %q", nodes)
		}
	}
}

func TestIdentityOf(t *testing.T) {
	mustURL := func(s string) *url.URL {
		u, err := url.Parse(s)
		if err != nil {
			t.Fatal(err)
		}
		return u
	}
	for _, tc := range []struct {
		name string
		cert x509.Certificate
		want Identity
	}{
		{"node uri", x509.Certificate{URIs: []*url.URL{NodeURI("h1")}}, Identity{KindNode, "h1"}},
		{"admin uri", x509.Certificate{URIs: []*url.URL{AdminURI()}}, Identity{Kind: KindAdmin}},
		{"uri wins over cn", x509.Certificate{URIs: []*url.URL{NodeURI("h1")}, Subject: pkix.Name{CommonName: "admin"}}, Identity{KindNode, "h1"}},
		{"cn node", x509.Certificate{Subject: pkix.Name{CommonName: "node:h2"}}, Identity{KindNode, "h2"}},
		{"cn admin", x509.Certificate{Subject: pkix.Name{CommonName: "admin"}}, Identity{Kind: KindAdmin}},
		{"plain cn", x509.Certificate{Subject: pkix.Name{CommonName: "h1"}}, Identity{}},
		{"two identities", x509.Certificate{URIs: []*url.URL{NodeURI("h1"), NodeURI("h2")}}, Identity{}},
		{"bad node name", x509.Certificate{URIs: []*url.URL{mustURL("vxfab://node/H1")}}, Identity{}},
		{"nested path", x509.Certificate{URIs: []*url.URL{mustURL("vxfab://node/h1/x")}}, Identity{}},
		{"query", x509.Certificate{URIs: []*url.URL{mustURL("vxfab://admin?x=1")}}, Identity{}},
		{"other scheme ignored", x509.Certificate{URIs: []*url.URL{mustURL("spiffe://node/h1")}, Subject: pkix.Name{CommonName: "node:h3"}}, Identity{KindNode, "h3"}},
		{"bad uri beats good cn", x509.Certificate{URIs: []*url.URL{mustURL("vxfab://root")}, Subject: pkix.Name{CommonName: "admin"}}, Identity{}},
	} {
		if got := IdentityOf(&tc.cert); got != tc.want {
			t.Errorf("%s: got %+v, want %+v", tc.name, got, tc.want)
		}
	}
}

// handshake runs a TLS handshake over loopback TCP (kernel buffers, so an alert written by one side
// never blocks on the other) and returns the server's view.
func handshake(t *testing.T, server, client *tls.Config) (tls.ConnectionState, error, error) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	type result struct {
		st  tls.ConnectionState
		err error
	}
	done := make(chan result, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			done <- result{err: err}
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		srv := tls.Server(c, server)
		err = srv.Handshake()
		if err == nil {
			// TLS 1.3 clients finish before the server has checked their certificate: make the
			// client wait for the server's verdict by reading one byte.
			_, err = srv.Write([]byte{1})
		}
		done <- result{srv.ConnectionState(), err}
	}()
	raw, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	raw.SetDeadline(time.Now().Add(5 * time.Second))
	cl := tls.Client(raw, client)
	cerr := cl.Handshake()
	if cerr == nil {
		_, cerr = cl.Read(make([]byte, 1))
	}
	r := <-done
	return r.st, r.err, cerr
}

func TestTLSConfigs(t *testing.T) {
	dir := t.TempDir()
	initDir(t, dir, "h1")
	other := t.TempDir()
	initDir(t, other, "h1")
	p := func(d, f string) string { return filepath.Join(d, f) }

	server, err := ServerTLSConfig(p(dir, ServerCert), p(dir, ServerKey), trustIn(t, p(dir, CACertFile)), nil)
	if err != nil {
		t.Fatal(err)
	}
	node, err := ClientTLSConfig(trustIn(t, p(dir, CACertFile)), p(dir, NodeCertFile("h1")), p(dir, NodeKeyFile("h1")), "localhost")
	if err != nil {
		t.Fatal(err)
	}
	st, serr, cerr := handshake(t, server, node)
	if serr != nil || cerr != nil {
		t.Fatalf("node handshake: server %v, client %v", serr, cerr)
	}
	if got := IdentityOfConn(st); got != (Identity{KindNode, "h1"}) {
		t.Errorf("server sees %+v, want node h1", got)
	}

	anon, _ := ClientTLSConfig(trustIn(t, p(dir, CACertFile)), "", "", "localhost")
	st, serr, cerr = handshake(t, server, anon)
	if serr != nil || cerr != nil {
		t.Fatalf("anonymous handshake: server %v, client %v", serr, cerr)
	}
	if got := IdentityOfConn(st); got.Kind != KindNone {
		t.Errorf("anonymous client has identity %+v", got)
	}

	// A client certificate from another CA: the server refuses the handshake.
	foreign, _ := ClientTLSConfig(trustIn(t, p(dir, CACertFile)), p(other, NodeCertFile("h1")), p(other, NodeKeyFile("h1")), "localhost")
	if _, serr, _ = handshake(t, server, foreign); serr == nil {
		t.Error("server accepted a client certificate of another CA")
	}
	// A client trusting another CA refuses our server.
	wrongCA, _ := ClientTLSConfig(trustIn(t, p(other, CACertFile)), "", "", "localhost")
	if _, _, cerr = handshake(t, server, wrongCA); cerr == nil {
		t.Error("client accepted a server certificate of another CA")
	}
	// The server's own certificate is not a client certificate.
	asClient, _ := ClientTLSConfig(trustIn(t, p(dir, CACertFile)), p(dir, ServerCert), p(dir, ServerKey), "localhost")
	if _, serr, _ = handshake(t, server, asClient); serr == nil {
		t.Error("server accepted its own certificate as a client certificate")
	}
	// A name the server certificate does not carry.
	badName, _ := ClientTLSConfig(trustIn(t, p(dir, CACertFile)), "", "", "elsewhere.example")
	if _, _, cerr = handshake(t, server, badName); cerr == nil {
		t.Error("client accepted a server certificate for another name")
	}
}

// After a rotation, servers and agents rewrite gossip.key as a keyring (a comment, then keys, the
// first primary): init keeps it and goes on. A gossip.key that reads as no keyring fails the init
// before anything is issued.
func TestInitKeepsARotatedKeyring(t *testing.T) {
	dir := t.TempDir()
	initDir(t, dir, "h1")
	keyring := "# gossip keyring written by vxfabric (GossipService); the first key encrypts\n" +
		base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{1}, 32)) + "\n" +
		base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{2}, 32)) + "\n"
	path := filepath.Join(dir, GossipKeyFile)
	if err := os.WriteFile(path, []byte(keyring), 0o600); err != nil {
		t.Fatal(err)
	}
	if got := created(initDir(t, dir, "h1", "h2")); len(got) != 1 || got[0] != NodeCertFile("h2") {
		t.Errorf("init over a rotated keyring created %v, want only %s", got, NodeCertFile("h2"))
	}
	if now, _ := os.ReadFile(path); string(now) != keyring {
		t.Error("init rewrote the rotated keyring")
	}
	if k, err := ReadGossipKey(path); err != nil || !bytes.Equal(k, bytes.Repeat([]byte{1}, 32)) {
		t.Errorf("primary key of the keyring: %x, %v", k, err)
	}

	if err := os.WriteFile(path, []byte("not a key\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := DefaultInit(dir)
	cfg.Nodes = []string{"h1", "h3"}
	if _, err := Init(cfg); err == nil || !strings.Contains(err.Error(), path) {
		t.Errorf("init over a corrupt gossip.key: %v, want an error naming the file", err)
	}
	if _, err := os.Stat(filepath.Join(dir, NodeCertFile("h3"))); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the failed init issued %s anyway (%v)", NodeCertFile("h3"), err)
	}
}
