package pki

import (
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"math/big"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestRevoke(t *testing.T) {
	dir := t.TempDir()
	cfg := DefaultInit(dir)
	cfg.Nodes = []string{"h1", "h2"}
	if _, err := Init(cfg); err != nil {
		t.Fatal(err)
	}
	cert := func(name string) *x509.Certificate {
		t.Helper()
		c, err := ReadCertFile(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	h1, h2 := cert(NodeCertFile("h1")), cert(NodeCertFile("h2"))
	crlPath := filepath.Join(dir, CRLFile)

	// Nothing revoked yet: no list, nothing refused.
	rev, err := NewRevocations(crlPath, trustIn(t, filepath.Join(dir, CACertFile)), false, nil)
	if err != nil {
		t.Fatal(err)
	}
	if rev.Revoked(h1) {
		t.Fatal("h1 revoked before any revocation")
	}
	_, n0, k0 := rev.InForce()
	if k0 != 0 {
		t.Fatalf("list in force before any revocation: number %v, %d revoked", n0, k0)
	}

	res, err := Revoke(dir, []*x509.Certificate{h1}, time.Now())
	if err != nil || len(res) != 1 || res[0].Already || res[0].Serial.Cmp(h1.SerialNumber) != 0 {
		t.Fatalf("revoke h1: %+v, %v", res, err)
	}
	first, err := os.ReadFile(crlPath)
	if err == nil {
		err = os.WriteFile(crlPath+".first", first, 0o644)
	}
	if err != nil {
		t.Fatal(err)
	}
	if res, err := Revoke(dir, []*x509.Certificate{h1}, time.Now()); err != nil || !res[0].Already {
		t.Fatalf("revoke h1 again: %+v, %v; want already revoked", res, err)
	}
	time.Sleep(1100 * time.Millisecond) // the list is looked at again at most once a second
	if !rev.Revoked(h1) || rev.Revoked(h2) {
		t.Fatalf("after revoking h1: h1 %v, h2 %v; want true, false", rev.Revoked(h1), rev.Revoked(h2))
	}
	ca1, n1, k1 := rev.InForce()
	if n1 == nil || (n0 != nil && n1.Cmp(n0) <= 0) || k1 != 1 || ca1 == "" {
		t.Fatalf("list in force after revoking h1: number %v (before %v), %d revoked; want a higher number, 1", n1, n0, k1)
	}

	// A list that is not the CA's leaves the last good one in force, and says why.
	other := t.TempDir()
	if _, err := Init(DefaultInit(other)); err != nil {
		t.Fatal(err)
	}
	if _, err := Revoke(dir, []*x509.Certificate{mustRead(t, filepath.Join(other, AdminCert))}, time.Now()); err == nil ||
		!strings.Contains(err.Error(), "not signed by the CA") {
		t.Fatalf("revoking another CA's certificate: %v", err)
	}
	if _, err := Revoke(other, []*x509.Certificate{mustRead(t, filepath.Join(other, AdminCert))}, time.Now()); err != nil {
		t.Fatal(err)
	}
	foreign, err := os.ReadFile(filepath.Join(other, CRLFile))
	if err != nil {
		t.Fatal(err)
	}
	if err := WriteFileAtomic(crlPath, foreign, 0o644); err != nil {
		t.Fatal(err)
	}
	time.Sleep(1100 * time.Millisecond)
	if !rev.Revoked(h1) || rev.Err() == nil {
		t.Fatalf("with another CA's list: h1 revoked %v, err %v; want the last good list in force and an error", rev.Revoked(h1), rev.Err())
	}
	if ca, n, k := rev.InForce(); ca != ca1 || n.Cmp(n1) != 0 || k != 1 {
		t.Fatalf("with another CA's list: %s's list number %v, %d revoked in force; want the last good list, %s's %v, 1", ca, n, k, ca1, n1)
	}
	if _, err := NewRevocations(crlPath, trustIn(t, filepath.Join(dir, CACertFile)), false, nil); err == nil {
		t.Fatal("a server starting with another CA's list: no error")
	}
	// Nor do a list that is gone, or one older than the list in force.
	older, err := os.ReadFile(crlPath + ".first")
	if err != nil {
		t.Fatal(err)
	}
	for _, step := range []struct {
		what   string
		change func() error
	}{
		{"gone", func() error { return os.Remove(crlPath) }},
		{"older", func() error { return WriteFileAtomic(crlPath, older, 0o644) }},
	} {
		what := step.what
		if err := step.change(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(1100 * time.Millisecond)
		if !rev.Revoked(h1) || rev.Err() == nil {
			t.Fatalf("list %s: h1 revoked %v, err %v; want the last good list in force and an error", what, rev.Revoked(h1), rev.Err())
		}
	}
	if _, err := NewRevocations(filepath.Join(dir, "missing.pem"), trustIn(t, filepath.Join(dir, CACertFile)), true, nil); err == nil {
		t.Fatal("a list named explicitly and missing: no error")
	}
	if err := os.Remove(crlPath); err != nil {
		t.Fatal(err)
	}

	// Init issues a revoked certificate anew and keeps the others.
	if _, err := Revoke(dir, []*x509.Certificate{h1}, time.Now()); err != nil {
		t.Fatal(err)
	}
	results, err := Init(cfg)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range results {
		want := filepath.Base(r.Path) == NodeCertFile("h1")
		if r.Created != want {
			t.Errorf("init after revoking h1: %s created %v, want %v", filepath.Base(r.Path), r.Created, want)
		}
	}
	if n := cert(NodeCertFile("h1")); n.SerialNumber.Cmp(h1.SerialNumber) == 0 {
		t.Error("h1's certificate was not issued anew")
	}
}

func mustRead(t *testing.T, path string) *x509.Certificate {
	t.Helper()
	c, err := ReadCertFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestRefuseRevokedServer: a client configured with the revocation list refuses a server whose
// certificate is on it, in the handshake.
func TestRefuseRevokedServer(t *testing.T) {
	dir := t.TempDir()
	p := func(f string) string { return filepath.Join(dir, f) }
	server, client := serverAndNode(t, dir)
	rev, err := NewRevocations(p(CRLFile), trustIn(t, p(CACertFile)), false, nil)
	if err != nil {
		t.Fatal(err)
	}
	RefuseRevoked(client, rev)
	if _, serr, cerr := handshake(t, server, client); serr != nil || cerr != nil {
		t.Fatalf("before revocation: server %v, client %v", serr, cerr)
	}
	srvCert, err := ReadCertFile(p(ServerCert))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Revoke(dir, []*x509.Certificate{srvCert}, time.Now()); err != nil {
		t.Fatal(err)
	}
	rev2, err := NewRevocations(p(CRLFile), trustIn(t, p(CACertFile)), true, nil)
	if err != nil {
		t.Fatal(err)
	}
	RefuseRevoked(client, rev2)
	if _, _, cerr := handshake(t, server, client); !errors.Is(cerr, ErrRevoked) {
		t.Errorf("revoked server: client error %v, want ErrRevoked", cerr)
	}
}

// TestCertsOfFindsRenewedCertificates: a node certificate renewed by certs init (here: its key was
// lost) leaves the earlier one valid; CertsOf finds both, and not those of a node named alike.
func TestCertsOfFindsRenewedCertificates(t *testing.T) {
	dir := t.TempDir()
	cfg := DefaultInit(dir)
	cfg.Nodes = []string{"h1", "h1-2"}
	if _, err := Init(cfg); err != nil {
		t.Fatal(err)
	}
	first, err := ReadCertFile(filepath.Join(dir, NodeCertFile("h1")))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(dir, NodeKeyFile("h1"))); err != nil {
		t.Fatal(err)
	}
	if _, err := Init(cfg); err != nil {
		t.Fatal(err)
	}
	second, err := ReadCertFile(filepath.Join(dir, NodeCertFile("h1")))
	if err != nil {
		t.Fatal(err)
	}
	if first.SerialNumber.Cmp(second.SerialNumber) == 0 {
		t.Fatal("certs init did not renew h1's certificate")
	}
	certs, err := CertsOf(dir, NodeCertFile("h1"), time.Now())
	if err != nil {
		t.Fatal(err)
	}
	var serials []string
	for _, c := range certs {
		serials = append(serials, c.SerialNumber.Text(16))
	}
	slices.Sort(serials)
	want := []string{first.SerialNumber.Text(16), second.SerialNumber.Text(16)}
	slices.Sort(want)
	if !slices.Equal(serials, want) {
		t.Errorf("CertsOf(h1) = %v, want the first and the renewed one %v", serials, want)
	}
	// Expired earlier ones are left out, the current one is not; a name never issued is an error.
	if certs, err := CertsOf(dir, NodeCertFile("h1"), time.Now().AddDate(5, 0, 0)); err != nil || len(certs) != 1 ||
		certs[0].SerialNumber.Cmp(second.SerialNumber) != 0 {
		t.Errorf("CertsOf five years on: %d certificates, %v; want the current one only", len(certs), err)
	}
	if _, err := CertsOf(dir, NodeCertFile("h9"), time.Now()); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("CertsOf(h9): %v, want ErrNotExist", err)
	}
	// Revoking them all: both are on the list.
	if _, err := Revoke(dir, certs, time.Now()); err != nil {
		t.Fatal(err)
	}
	rev, err := NewRevocations(filepath.Join(dir, CRLFile), trustIn(t, filepath.Join(dir, CACertFile)), true, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !rev.Revoked(first) || !rev.Revoked(second) {
		t.Errorf("revoked: first %v, renewed %v; want both", rev.Revoked(first), rev.Revoked(second))
	}
}

// TestClientPresentsItsRenewedCertificate: a client certificate issued anew in place (certs init)
// is presented from the next handshake on, without a new TLS configuration (an agent restart).
func TestClientPresentsItsRenewedCertificate(t *testing.T) {
	dir := t.TempDir()
	p := func(f string) string { return filepath.Join(dir, f) }
	server, client := serverAndNode(t, dir)
	presented := func() *big.Int {
		t.Helper()
		st, serr, cerr := handshake(t, server, client)
		if serr != nil || cerr != nil || len(st.VerifiedChains) == 0 {
			t.Fatalf("handshake: server %v, client %v", serr, cerr)
		}
		return st.VerifiedChains[0][0].SerialNumber
	}
	first := presented()
	time.Sleep(10 * time.Millisecond) // a later modification time
	if err := os.Remove(p(NodeKeyFile("h1"))); err != nil {
		t.Fatal(err)
	}
	initDir(t, dir, "h1") // issues h1 anew: its key was lost
	renewed, err := ReadCertFile(p(NodeCertFile("h1")))
	if err != nil {
		t.Fatal(err)
	}
	if got := presented(); got.Cmp(renewed.SerialNumber) != 0 || got.Cmp(first) == 0 {
		t.Errorf("presented serial %x after the renewal, want the new %x (first %x)", got, renewed.SerialNumber, first)
	}
}

// TestCertsOfAfterANewCA: certificates of a CA since replaced are not the new CA's to revoke (Revoke
// would refuse the whole list).
func TestCertsOfAfterANewCA(t *testing.T) {
	dir := t.TempDir()
	initDir(t, dir, "h1")
	for _, f := range []string{CACertFile, CAKeyFile} {
		if err := os.Remove(filepath.Join(dir, f)); err != nil {
			t.Fatal(err)
		}
	}
	initDir(t, dir, "h1") // a new CA: every leaf issued anew
	certs, err := CertsOf(dir, NodeCertFile("h1"), time.Now())
	if err != nil || len(certs) != 1 {
		t.Fatalf("CertsOf after a new CA: %d certificates, %v; want the new one only", len(certs), err)
	}
	if _, err := Revoke(dir, certs, time.Now()); err != nil {
		t.Errorf("revoke h1 after a new CA: %v", err)
	}
}

// serverAndNode makes a PKI in dir with node h1 and returns the TLS configurations of its server
// and of h1.
func serverAndNode(t *testing.T, dir string) (server, client *tls.Config) {
	t.Helper()
	initDir(t, dir, "h1")
	p := func(f string) string { return filepath.Join(dir, f) }
	server, err := ServerTLSConfig(p(ServerCert), p(ServerKey), trustIn(t, p(CACertFile)), nil)
	if err != nil {
		t.Fatal(err)
	}
	client, err = ClientTLSConfig(trustIn(t, p(CACertFile)), p(NodeCertFile("h1")), p(NodeKeyFile("h1")), "localhost")
	if err != nil {
		t.Fatal(err)
	}
	return server, client
}

// trustIn is the Trust of the CA file at path.
func trustIn(t *testing.T, path string) *Trust {
	t.Helper()
	trust, err := NewTrust(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	return trust
}

// TestTrustFollowsItsFile: a CA added to the file is trusted within a second; a file emptied or
// gone leaves the CAs read before.
func TestTrustFollowsItsFile(t *testing.T) {
	a, b := t.TempDir(), t.TempDir()
	initDir(t, a, "h1")
	initDir(t, b, "h1")
	caA, caB := mustRead(t, filepath.Join(a, CACertFile)), mustRead(t, filepath.Join(b, CACertFile))
	path := filepath.Join(t.TempDir(), CACertFile)
	write := func(certs ...*x509.Certificate) {
		t.Helper()
		var data []byte
		for _, c := range certs {
			data = append(data, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
		}
		if err := WriteFileAtomic(path, data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write(caA)
	trust := trustIn(t, path)
	if !trust.Trusts(caA) || trust.Trusts(caB) {
		t.Fatalf("A only in the file: trusts A %v, B %v", trust.Trusts(caA), trust.Trusts(caB))
	}
	write(caA, caB)
	if trust.Trusts(caB) {
		t.Error("B trusted before the file was looked at again (at most once a second)")
	}
	time.Sleep(1100 * time.Millisecond)
	if !trust.Trusts(caA) || !trust.Trusts(caB) {
		t.Fatalf("A and B in the file: trusts A %v, B %v", trust.Trusts(caA), trust.Trusts(caB))
	}
	both := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caA.Raw})
	both = append(both, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caB.Raw})...)
	for _, step := range []struct {
		what   string
		change func() error
	}{
		{"emptied", func() error { return WriteFileAtomic(path, nil, 0o644) }},
		{"cut short in its second block", func() error { return os.WriteFile(path, both[:len(both)-100], 0o644) }},
		{"gone", func() error { return os.Remove(path) }},
	} {
		if err := step.change(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(1100 * time.Millisecond)
		if !trust.Trusts(caA) || !trust.Trusts(caB) {
			t.Errorf("file %s: trusts A %v, B %v; want the CAs read before", step.what, trust.Trusts(caA), trust.Trusts(caB))
		}
	}
	write(caB)
	time.Sleep(1100 * time.Millisecond)
	if trust.Trusts(caA) || !trust.Trusts(caB) {
		t.Errorf("B only in the file: trusts A %v, B %v", trust.Trusts(caA), trust.Trusts(caB))
	}
}

// TestTrustKnowsARenewedCA: a CA certificate issued anew with the same name and key (a new
// validity) is the same CA: chains verified against the old certificate stay trusted.
func TestTrustKnowsARenewedCA(t *testing.T) {
	dir := t.TempDir()
	initDir(t, dir, "h1")
	old := mustRead(t, filepath.Join(dir, CACertFile))
	key, err := readKey(filepath.Join(dir, CAKeyFile))
	if err != nil {
		t.Fatal(err)
	}
	tmpl := *old
	tmpl.SerialNumber = big.NewInt(42)
	tmpl.NotAfter = old.NotAfter.AddDate(1, 0, 0)
	der, err := x509.CreateCertificate(rand.Reader, &tmpl, &tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), CACertFile)
	if err := WriteFileAtomic(path, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		t.Fatal(err)
	}
	if !trustIn(t, path).Trusts(old) {
		t.Error("the CA renewed with its key does not trust what its old certificate verified")
	}
	other := t.TempDir()
	initDir(t, other, "h1")
	if trustIn(t, path).Trusts(mustRead(t, filepath.Join(other, CACertFile))) {
		t.Error("another CA of the same name is trusted")
	}
}
