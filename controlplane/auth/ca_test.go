package auth

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"

	vxfabricv1 "github.com/vxfabric/vxfabric/proto/vxfabric/v1"
	"github.com/vxfabric/vxfabric/security/pki"
)

// TestNewCAWithoutRestarts moves a server and its clients from CA A to CA B by editing files only,
// as security/README.md says: trust both, reissue the leaves, drop the old CA and switch the
// revocation list. It copies B's list a step early, to show why the README's last step changes the
// CA file and the list together: B's list is not taken while A is trusted. Neither the server nor a
// client's connection is made anew for any step.
func TestNewCAWithoutRestarts(t *testing.T) {
	cli := startEtcd(t)
	a, b := makePKI(t), makePKI(t)
	pa := func(f string) string { return filepath.Join(a, f) }
	pb := func(f string) string { return filepath.Join(b, f) }

	// The server's files, copies the test rewrites: certificate, key, CA file and revocation list.
	srvDir := t.TempDir()
	ps := func(f string) string { return filepath.Join(srvDir, f) }
	// A's list revokes A's h2 and is at number 3 (Init's empty list, then two revocations), above
	// the 2 of B's first.
	for _, c := range []string{pki.NodeCertFile("h2"), pki.AdminCert} {
		if _, err := pki.Revoke(a, []*x509.Certificate{readCert(t, pa(c))}, time.Now()); err != nil {
			t.Fatal(err)
		}
	}
	staleA := filepath.Join(t.TempDir(), pki.CRLFile)
	copyFiles(t, staleA, pa(pki.CRLFile))
	copyFiles(t, ps(pki.ServerCert), pa(pki.ServerCert))
	copyFiles(t, ps(pki.ServerKey), pa(pki.ServerKey))
	copyFiles(t, ps(pki.CACertFile), pa(pki.CACertFile))
	copyFiles(t, ps(pki.CRLFile), pa(pki.CRLFile))
	s := startServer(t, cli, func(c *Config) {
		c.TLSCert, c.TLSKey, c.TLSCA, c.TLSCRL = ps(pki.ServerCert), ps(pki.ServerKey), ps(pki.CACertFile), ps(pki.CRLFile)
	})
	// A client's CA file, rewritten by the test too.
	trustDir := t.TempDir()
	copyFiles(t, filepath.Join(trustDir, pki.CACertFile), pa(pki.CACertFile))

	// report is a call that fails at once when the connection cannot be made (Unavailable), and
	// waits for a connection refused before to be made again (a retry every 100 ms) when waitReady.
	report := func(conn *grpc.ClientConn, node string, waitReady bool) error {
		ctx, cancel := context.WithTimeout(t.Context(), 3*time.Second)
		defer cancel()
		_, err := vxfabricv1.NewAgentServiceClient(conn).ReportApplied(ctx,
			&vxfabricv1.ReportAppliedRequest{Node: node, Revision: 1}, grpc.WaitForReady(waitReady))
		return err
	}
	// refused checks a call refused in the handshake, for the reason given.
	refused := func(what string, err error, why string) {
		t.Helper()
		if wantCode(t, what, err, codes.Unavailable); err != nil && !strings.Contains(err.Error(), why) {
			t.Errorf("%s: %v, want it to say %q", what, err, why)
		}
	}
	// serverRefuses checks that the server refuses node's certificate from certDir in the handshake,
	// with the alert given. A raw TLS client that sends nothing but the handshake reads the alert
	// (a gRPC client may be writing its preface when the server closes, and see a broken pipe).
	serverRefuses := func(what, certDir, node, alert string) {
		t.Helper()
		trust, err := pki.NewTrust(filepath.Join(trustDir, pki.CACertFile), nil)
		if err != nil {
			t.Fatal(err)
		}
		cfg, err := pki.ClientTLSConfig(trust, filepath.Join(certDir, pki.NodeCertFile(node)), filepath.Join(certDir, pki.NodeKeyFile(node)), "localhost")
		if err != nil {
			t.Fatal(err)
		}
		cfg.NextProtos = []string{"h2"}
		conn, err := tls.Dial("tcp", s.addr, cfg)
		if err == nil {
			conn.SetReadDeadline(time.Now().Add(3 * time.Second))
			_, err = conn.Read(make([]byte, 1))
			conn.Close()
		}
		if err == nil || !strings.Contains(err.Error(), alert) {
			t.Errorf("%s: %v, want the server to refuse the handshake with %q", what, err, alert)
		}
	}
	// An agent's connection: reconnects quickly, so that a handshake refused once is tried again.
	quick := grpc.WithConnectParams(grpc.ConnectParams{Backoff: backoff.Config{BaseDelay: 50 * time.Millisecond, Multiplier: 1, MaxDelay: 100 * time.Millisecond}, MinConnectTimeout: time.Second})
	agent := func(certDir, node string) *grpc.ClientConn {
		return s.dial(t, client{caDir: trustDir, certDir: certDir, cert: "node-" + node, dialOpts: []grpc.DialOption{quick}})
	}
	looked := func() { time.Sleep(1100 * time.Millisecond) } // files are looked at again at most once a second

	// 1. B's node certificate is not trusted yet; A's is, A's revoked h2 is not.
	hB := agent(b, "h1")
	wantCode(t, "B's h1 while the server trusts A only", report(hB, "h1", false), codes.Unavailable)
	serverRefuses("B's h1 while the server trusts A only", b, "h1", "unknown certificate authority")
	hA := agent(a, "h1")
	wantCode(t, "A's h1", report(hA, "h1", true), codes.OK)
	serverRefuses("A's revoked h2", a, "h2", "bad certificate")

	// 2. The server trusts A and B: B's certificate is taken, on the connection that was refused.
	copyFiles(t, ps(pki.CACertFile), pa(pki.CACertFile), pb(pki.CACertFile))
	looked()
	wantCode(t, "B's h1 once the server trusts B", report(hB, "h1", true), codes.OK)

	// 3. The server presents B's certificate. A client that trusts A only refuses it; once its CA
	// file holds B too, the same connection gets through.
	copyFiles(t, ps(pki.ServerKey), pb(pki.ServerKey))
	copyFiles(t, ps(pki.ServerCert), pb(pki.ServerCert))
	fresh := agent(b, "h1")
	refused("a client trusting A only, server on B's certificate", report(fresh, "h1", false), "certificate signed by unknown authority")
	copyFiles(t, filepath.Join(trustDir, pki.CACertFile), pa(pki.CACertFile), pb(pki.CACertFile))
	looked()
	wantCode(t, "the same client once it trusts B", report(fresh, "h1", true), codes.OK)

	// 4. B's list, revoking B's h1, comes while A is still trusted: A's list stays in force, as only
	// it keeps A's revoked h2 out.
	if _, err := pki.Revoke(b, []*x509.Certificate{readCert(t, pb(pki.NodeCertFile("h1")))}, time.Now()); err != nil {
		t.Fatal(err)
	}
	copyFiles(t, ps(pki.CRLFile), pb(pki.CRLFile))
	looked()
	serverRefuses("A's revoked h2 while A is trusted", a, "h2", "bad certificate")
	if err := s.auth.revoked.Err(); err == nil || !strings.Contains(err.Error(), "another CA") {
		t.Errorf("B's list while A is trusted: %v, want it refused as another CA's", err)
	}

	// 5. The server drops A: A's h1 is refused on its open connection, and gets no new one; B's list
	// is in force, although its number is lower, and refuses B's h1 on its open connection.
	copyFiles(t, ps(pki.CACertFile), pb(pki.CACertFile))
	looked()
	wantCode(t, "A's h1 on its open connection once A is dropped", report(hA, "h1", false), codes.Unauthenticated)
	serverRefuses("A's h1 on a new connection", a, "h1", "unknown certificate authority")
	wantCode(t, "B's revoked h1", report(hB, "h1", false), codes.Unauthenticated)
	if _, n, k := s.auth.revoked.InForce(); n == nil || n.Int64() != 2 || k != 1 {
		t.Errorf("list in force: number %v, %d revoked; want B's, number 2, 1 revoked", n, k)
	}

	// 6. A stale copy of A's list is not taken over B's.
	copyFiles(t, ps(pki.CRLFile), staleA)
	looked()
	wantCode(t, "B's revoked h1 with A's list back in the file", report(hB, "h1", false), codes.Unauthenticated)
	if _, n, _ := s.auth.revoked.InForce(); n == nil || n.Int64() != 2 {
		t.Errorf("list in force with A's list back in the file: number %v, want B's 2", n)
	}
}

// TestOwnPKIRenewedWhileServing: a server that made its own PKI renews its certificate before it
// expires and presents the new one from the next handshake on, without a restart.
func TestOwnPKIRenewedWhileServing(t *testing.T) {
	dataDir := t.TempDir()
	a, err := New(Default(dataDir), startEtcd(t))
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(dataDir, "pki")
	presented := func() *x509.Certificate {
		t.Helper()
		trust, err := pki.NewTrust(filepath.Join(dir, pki.CACertFile), nil)
		if err != nil {
			t.Fatal(err)
		}
		srv, cl := net.Pipe()
		defer cl.Close()
		go func() {
			if conn, _, err := a.creds.ServerHandshake(srv); err == nil {
				conn.Close()
			}
		}()
		c := tls.Client(cl, &tls.Config{RootCAs: trust.Pool(), ServerName: "localhost", NextProtos: []string{"h2"}})
		if err := c.Handshake(); err != nil {
			t.Fatal(err)
		}
		return c.ConnectionState().PeerCertificates[0]
	}
	if left := time.Until(presented().NotAfter); left < 300*24*time.Hour {
		t.Fatalf("the server's first certificate is valid for %s more", left)
	}

	// A certificate about to expire (an old one, as after eleven months of running).
	for _, f := range []string{pki.ServerCert, pki.ServerKey} {
		if err := os.Remove(filepath.Join(dir, f)); err != nil {
			t.Fatal(err)
		}
	}
	short := pki.DefaultInit(dir)
	short.Validity = 2 * time.Hour
	if _, err := pki.Init(short); err != nil {
		t.Fatal(err)
	}
	if left := time.Until(presented().NotAfter); left > 2*time.Hour {
		t.Fatalf("the server presents a certificate valid for %s more, want the short one from its files", left)
	}

	a.renewPKIOnce()
	if left := time.Until(presented().NotAfter); left < 300*24*time.Hour {
		t.Errorf("after the renewal the server presents a certificate valid for %s more, want about a year", left)
	}

	// An admin moving the server to another CA by hand (both CAs trusted, the other's certificate in
	// place): the renewal leaves that certificate alone.
	other := makePKI(t)
	copyFiles(t, filepath.Join(dir, pki.CACertFile), filepath.Join(dir, pki.CACertFile), filepath.Join(other, pki.CACertFile))
	copyFiles(t, filepath.Join(dir, pki.ServerKey), filepath.Join(other, pki.ServerKey))
	copyFiles(t, filepath.Join(dir, pki.ServerCert), filepath.Join(other, pki.ServerCert))
	want := readCert(t, filepath.Join(other, pki.ServerCert))
	a.renewPKIOnce()
	if got := presented(); !got.Equal(want) {
		t.Errorf("after a renewal check the server presents %q of %q, want the other CA's certificate put there by hand", got.Subject, got.Issuer)
	}
}

func readCert(t *testing.T, path string) *x509.Certificate {
	t.Helper()
	c, err := pki.ReadCertFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// copyFiles writes the concatenation of the files from to the file to, atomically.
func copyFiles(t *testing.T, to string, from ...string) {
	t.Helper()
	var data []byte
	for _, f := range from {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		data = append(data, b...)
	}
	if err := pki.WriteFileAtomic(to, data, 0o600); err != nil {
		t.Fatal(err)
	}
}
