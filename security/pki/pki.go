// Package pki creates and loads vxfabric's certificates: one CA, a server certificate, one client
// certificate per node (whose identity is the node name) and an admin client certificate, plus the
// gossip key; and it builds the *tls.Config of servers and clients from them.
//
// Identity in a client certificate is a URI SAN, vxfab://node/<name> for an agent and vxfab://admin
// for an operator; the subject CN says the same ("node:<name>", "admin") for users whose own PKI
// cannot issue URI SANs. A certificate is only trusted for that identity once it verifies against
// the CA with the client-auth extended key usage, so a server certificate can never act as a client.
//
// The package writes only inside the directory it is given, never replaces a valid file, and never
// replaces a CA whose key is missing (that would silently orphan every certificate already issued).
package pki

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// File names inside a PKI directory.
const (
	CACertFile    = "ca.crt"
	CAKeyFile     = "ca.key"
	ServerCert    = "server.crt"
	ServerKey     = "server.key"
	AdminCert     = "admin.crt"
	AdminKey      = "admin.key"
	GossipKeyFile = "gossip.key"
	// IssuedDir keeps a copy of every certificate issued (issued/<name>-<serial>.crt), so that a
	// name revokes those renewed earlier too (CertsOf).
	IssuedDir = "issued"
)

// NodeCertFile and NodeKeyFile name the client certificate of one node.
func NodeCertFile(node string) string { return "node-" + node + ".crt" }

// NodeKeyFile is the key beside NodeCertFile.
func NodeKeyFile(node string) string { return "node-" + node + ".key" }

// URI SANs that carry a client identity.
const (
	uriScheme = "vxfab"
	adminHost = "admin"
	nodeHost  = "node"
)

// NodeURI is the URI SAN of a node's client certificate.
func NodeURI(node string) *url.URL {
	return &url.URL{Scheme: uriScheme, Host: nodeHost, Path: "/" + node}
}

// AdminURI is the URI SAN of the admin client certificate.
func AdminURI() *url.URL { return &url.URL{Scheme: uriScheme, Host: adminHost} }

// Kind is what a client certificate lets its holder be.
type Kind int

const (
	// KindNone: the certificate names no vxfabric identity.
	KindNone Kind = iota
	// KindNode: a node agent, for the node Identity.Name only.
	KindNode
	// KindAdmin: an operator, allowed everything.
	KindAdmin
)

func (k Kind) String() string {
	switch k {
	case KindNode:
		return "node"
	case KindAdmin:
		return "admin"
	default:
		return "none"
	}
}

// Identity is who a verified client certificate speaks for.
type Identity struct {
	Kind Kind
	// Name is the node name (KindNode only).
	Name string
}

// IdentityOf reads the identity of a client certificate that has ALREADY been verified against the
// CA. The first vxfab:// URI SAN decides; without one, a CN "node:<name>" or "admin" does. A
// certificate naming two different identities is refused (KindNone): it is ambiguous by construction.
func IdentityOf(cert *x509.Certificate) Identity {
	var found []Identity
	for _, u := range cert.URIs {
		if u.Scheme != uriScheme {
			continue
		}
		if id, ok := parseURIIdentity(u); ok {
			found = append(found, id)
		} else {
			return Identity{}
		}
	}
	if len(found) == 0 {
		if id, ok := parseCN(cert.Subject.CommonName); ok {
			return id
		}
		return Identity{}
	}
	for _, id := range found[1:] {
		if id != found[0] {
			return Identity{}
		}
	}
	return found[0]
}

func parseURIIdentity(u *url.URL) (Identity, bool) {
	if u.User != nil || u.RawQuery != "" || u.Fragment != "" || u.Opaque != "" {
		return Identity{}, false
	}
	switch u.Host {
	case adminHost:
		if u.Path == "" || u.Path == "/" {
			return Identity{Kind: KindAdmin}, true
		}
	case nodeHost:
		name := strings.TrimPrefix(u.Path, "/")
		if ValidNodeName(name) {
			return Identity{Kind: KindNode, Name: name}, true
		}
	}
	return Identity{}, false
}

func parseCN(cn string) (Identity, bool) {
	if cn == "admin" {
		return Identity{Kind: KindAdmin}, true
	}
	if name, ok := strings.CutPrefix(cn, "node:"); ok && ValidNodeName(name) {
		return Identity{Kind: KindNode, Name: name}, true
	}
	return Identity{}, false
}

// ValidNodeName reports whether s is a node name a certificate may carry: the API's name rule,
// 1-63 characters of [a-z0-9-] starting with a letter.
func ValidNodeName(s string) bool {
	if len(s) == 0 || len(s) > 63 || s[0] < 'a' || s[0] > 'z' {
		return false
	}
	for _, c := range []byte(s) {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}

// InitConfig says what `vxfab certs init` creates.
type InitConfig struct {
	Dir string
	// Nodes get one client certificate each.
	Nodes []string
	// ServerNames and ServerIPs are SANs of the server certificate, besides localhost and 127.0.0.1.
	ServerNames []string
	ServerIPs   []net.IP
	// Validity of leaf certificates; the CA lives twice as long. Default one year.
	Validity time.Duration
	Logger   *slog.Logger
}

// DefaultInit returns an InitConfig for a directory.
func DefaultInit(dir string) InitConfig {
	return InitConfig{Dir: dir, Validity: 365 * 24 * time.Hour}
}

// Validate reports a configuration that cannot be initialised.
func (c InitConfig) Validate() error {
	if c.Dir == "" {
		return errors.New("pki directory is required")
	}
	for _, n := range c.Nodes {
		if !ValidNodeName(n) {
			return fmt.Errorf("node name %q: want 1-63 of [a-z0-9-] starting with a letter", n)
		}
	}
	for _, n := range c.ServerNames {
		if n == "" || strings.ContainsAny(n, " /\\:") {
			return fmt.Errorf("server name %q is not a DNS name", n)
		}
	}
	if c.Validity < time.Hour {
		return fmt.Errorf("validity %s is shorter than an hour", c.Validity)
	}
	return nil
}

// FileResult says what Init did with one file.
type FileResult struct {
	Path    string
	Created bool
}

// renewBefore: a certificate expiring sooner than this is reissued by Init.
const renewBefore = 30 * 24 * time.Hour

// RenewalDue reports whether the certificate file certName in dir expires within the window in which
// Init issues it anew. It fails for a certificate that the CA of dir (the first of its CA file) did
// not sign, as one put there by hand when moving to another CA: that one is not Init's to replace.
func RenewalDue(dir, certName string, now time.Time) (bool, error) {
	cert, err := readCert(filepath.Join(dir, certName))
	if err != nil {
		return false, err
	}
	ca, err := readCert(filepath.Join(dir, CACertFile))
	if err != nil {
		return false, err
	}
	if err := cert.CheckSignatureFrom(ca); err != nil {
		return false, fmt.Errorf("%s is not signed by the CA in %s: %w", certName, dir, err)
	}
	return cert.NotAfter.Sub(now) < renewBefore, nil
}

// Init creates whatever is missing or no longer valid in cfg.Dir and keeps the rest. It is safe to
// run again, e.g. with one more --node.
func Init(cfg InitConfig) ([]FileResult, error) {
	if cfg.Validity == 0 {
		cfg.Validity = DefaultInit(cfg.Dir).Validity
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("create pki directory %s: %w", cfg.Dir, err)
	}
	// The gossip keyring first: a file that cannot be read fails the init before anything is issued.
	gossipCreated, err := ensureGossipKey(filepath.Join(cfg.Dir, GossipKeyFile))
	if err != nil {
		return nil, err
	}
	var results []FileResult
	note := func(path string, created bool) {
		results = append(results, FileResult{Path: path, Created: created})
		if created {
			cfg.Logger.Info("pki file written", "path", path)
		}
	}

	ca, caCreated, err := ensureCA(cfg)
	if err != nil {
		return nil, err
	}
	ca.revoked = revokedIn(cfg.Dir, ca.cert)
	note(filepath.Join(cfg.Dir, CACertFile), caCreated)

	serverTmpl := leafTemplate(cfg.Validity)
	serverTmpl.Subject = pkix.Name{CommonName: "vxfabric server"}
	serverTmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
	serverTmpl.DNSNames = uniq(append([]string{"localhost"}, cfg.ServerNames...))
	serverTmpl.IPAddresses = uniqIPs(append([]net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback}, cfg.ServerIPs...))
	created, err := ensureLeaf(cfg.Dir, ServerCert, ServerKey, ca, serverTmpl, caCreated)
	if err != nil {
		return nil, err
	}
	note(filepath.Join(cfg.Dir, ServerCert), created)

	adminTmpl := leafTemplate(cfg.Validity)
	adminTmpl.Subject = pkix.Name{CommonName: "admin"}
	adminTmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	adminTmpl.URIs = []*url.URL{AdminURI()}
	if created, err = ensureLeaf(cfg.Dir, AdminCert, AdminKey, ca, adminTmpl, caCreated); err != nil {
		return nil, err
	}
	note(filepath.Join(cfg.Dir, AdminCert), created)

	for _, node := range uniq(cfg.Nodes) {
		tmpl := leafTemplate(cfg.Validity)
		tmpl.Subject = pkix.Name{CommonName: "node:" + node}
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
		tmpl.URIs = []*url.URL{NodeURI(node)}
		if created, err = ensureLeaf(cfg.Dir, NodeCertFile(node), NodeKeyFile(node), ca, tmpl, caCreated); err != nil {
			return nil, err
		}
		note(filepath.Join(cfg.Dir, NodeCertFile(node)), created)
	}

	note(filepath.Join(cfg.Dir, GossipKeyFile), gossipCreated)

	// An empty revocation list to start with, so that --tls-crl can name it at once; a new CA
	// starts a new one (the old one's signer is gone).
	crlPath := filepath.Join(cfg.Dir, CRLFile)
	_, statErr := os.Stat(crlPath)
	created = caCreated || errors.Is(statErr, os.ErrNotExist)
	if created {
		if err := os.Remove(crlPath); err != nil && !errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("replace the revocation list of the old CA: %w", err)
		}
		if _, err := Revoke(cfg.Dir, nil, time.Now()); err != nil {
			return nil, err
		}
	}
	note(crlPath, created)
	return results, nil
}

// authority is a loaded CA.
type authority struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	// revoked holds the serials of the directory's revocation list: such a certificate is issued anew.
	revoked map[string]bool
}

func ensureCA(cfg InitConfig) (authority, bool, error) {
	certPath, keyPath := filepath.Join(cfg.Dir, CACertFile), filepath.Join(cfg.Dir, CAKeyFile)
	cert, certErr := readCert(certPath)
	key, keyErr := readKey(keyPath)
	switch {
	case certErr == nil && keyErr == nil:
		if !publicKeyMatches(cert, key) {
			return authority{}, false, fmt.Errorf("CA %s does not match its key %s", certPath, keyPath)
		}
		if time.Until(cert.NotAfter) < renewBefore {
			return authority{}, false, fmt.Errorf("CA %s expires %s: replace the directory's CA by hand", certPath, cert.NotAfter.Format(time.DateOnly))
		}
		return authority{cert: cert, key: key}, false, nil
	case errors.Is(certErr, os.ErrNotExist) && errors.Is(keyErr, os.ErrNotExist):
	case certErr != nil:
		return authority{}, false, fmt.Errorf("CA certificate: %w", certErr)
	default:
		// A CA certificate without its key is another tool's CA, or a key lost: never replace it.
		return authority{}, false, fmt.Errorf("CA key: %w", keyErr)
	}

	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return authority{}, false, fmt.Errorf("generate CA key: %w", err)
	}
	tmpl := leafTemplate(2 * cfg.Validity)
	tmpl.Subject = pkix.Name{CommonName: "vxfabric CA", Organization: []string{"vxfabric"}}
	tmpl.IsCA = true
	tmpl.BasicConstraintsValid = true
	tmpl.MaxPathLenZero = true
	tmpl.KeyUsage = x509.KeyUsageCertSign | x509.KeyUsageCRLSign
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return authority{}, false, fmt.Errorf("sign CA certificate: %w", err)
	}
	if err := writePair(certPath, keyPath, der, key); err != nil {
		return authority{}, false, err
	}
	cert, err = x509.ParseCertificate(der)
	if err != nil {
		return authority{}, false, fmt.Errorf("parse new CA certificate: %w", err)
	}
	return authority{cert: cert, key: key}, true, nil
}

// ensureLeaf keeps an existing certificate when it verifies against ca for the same purpose, is not
// about to expire and already covers every SAN the template asks for; otherwise it issues a new one.
func ensureLeaf(dir, certName, keyName string, ca authority, tmpl *x509.Certificate, force bool) (bool, error) {
	certPath, keyPath := filepath.Join(dir, certName), filepath.Join(dir, keyName)
	if !force {
		cert, certErr := readCert(certPath)
		key, keyErr := readKey(keyPath)
		if certErr == nil && keyErr == nil && leafStillGood(cert, key, ca, tmpl) {
			// Issued before the archive existed: it goes in now.
			return false, archiveCert(dir, certName, cert.Raw)
		}
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return false, fmt.Errorf("generate key for %s: %w", certPath, err)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		return false, fmt.Errorf("sign %s: %w", certPath, err)
	}
	// Archived before it is put in place: a certificate in use is always one CertsOf finds.
	if err := archiveCert(dir, certName, der); err != nil {
		return false, err
	}
	if err := writePair(certPath, keyPath, der, key); err != nil {
		return false, err
	}
	return true, nil
}

func leafStillGood(cert *x509.Certificate, key *ecdsa.PrivateKey, ca authority, tmpl *x509.Certificate) bool {
	if !publicKeyMatches(cert, key) || time.Until(cert.NotAfter) < renewBefore || ca.revoked[RevocationKey(cert.RawIssuer, cert.SerialNumber)] {
		return false
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca.cert)
	if _, err := cert.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: tmpl.ExtKeyUsage}); err != nil {
		return false
	}
	for _, n := range tmpl.DNSNames {
		if !slices.Contains(cert.DNSNames, n) {
			return false
		}
	}
	for _, ip := range tmpl.IPAddresses {
		if !slices.ContainsFunc(cert.IPAddresses, ip.Equal) {
			return false
		}
	}
	if tmpl.URIs != nil && IdentityOf(cert) != IdentityOf(tmpl) {
		return false
	}
	return true
}

func leafTemplate(validity time.Duration) *x509.Certificate {
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		// crypto/rand never fails on Linux; a zero serial is still a valid certificate.
		serial = big.NewInt(0)
	}
	now := time.Now()
	return &x509.Certificate{
		SerialNumber: serial,
		NotBefore:    now.Add(-5 * time.Minute), // tolerate small clock skew between hosts
		NotAfter:     now.Add(validity),
		KeyUsage:     x509.KeyUsageDigitalSignature,
	}
}

func publicKeyMatches(cert *x509.Certificate, key *ecdsa.PrivateKey) bool {
	pub, ok := cert.PublicKey.(*ecdsa.PublicKey)
	return ok && pub.Equal(&key.PublicKey)
}

// readPEM reads the first PEM block of path, which must be of one of types (what names it in errors).
// An error reading the file is returned as it is (os.ErrNotExist stays recognisable).
func readPEM(path, what string, types ...string) (*pem.Block, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	block, _ := pem.Decode(data)
	if block == nil || !slices.Contains(types, block.Type) {
		return nil, fmt.Errorf("%s holds no PEM %s", path, what)
	}
	return block, nil
}

func readCert(path string) (*x509.Certificate, error) {
	block, err := readPEM(path, "certificate", "CERTIFICATE")
	if err != nil {
		return nil, err
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("parse %s: %w", path, err)
	}
	return cert, nil
}

func readKey(path string) (*ecdsa.PrivateKey, error) {
	block, err := readPEM(path, "key", "EC PRIVATE KEY", "PRIVATE KEY")
	if err != nil {
		return nil, err
	}
	if block.Type == "EC PRIVATE KEY" {
		key, err := x509.ParseECPrivateKey(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("parse %s: %w", path, err)
		}
		return key, nil
	}
	k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("parse %s: %w", path, err)
	}
	key, ok := k.(*ecdsa.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("%s is not an ECDSA key", path)
	}
	return key, nil
}

// archiveCert keeps a copy of the certificate der issued as certName in dir's IssuedDir (kept if
// already there).
func archiveCert(dir, certName string, der []byte) error {
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return fmt.Errorf("archive %s: %w", certName, err)
	}
	path := issuedPath(dir, certName, cert.SerialNumber)
	if _, err := os.Stat(path); err == nil {
		return nil
	}
	if err := os.MkdirAll(filepath.Join(dir, IssuedDir), 0o755); err != nil {
		return fmt.Errorf("archive %s: %w", certName, err)
	}
	return writeFileAtomic(path, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644)
}

func issuedPath(dir, certName string, serial *big.Int) string {
	return filepath.Join(dir, IssuedDir, strings.TrimSuffix(certName, ".crt")+"-"+serial.Text(16)+".crt")
}

// CertsOf returns the certificates issued as certName (pki.NodeCertFile("h1"), AdminCert) by the
// CA in dir: the one the file holds now, and those it held before (IssuedDir) that have not expired
// (and were signed by this CA, not by one it replaced), so that revoking them all leaves no older
// copy in use.
func CertsOf(dir, certName string, now time.Time) ([]*x509.Certificate, error) {
	ca, err := readCert(filepath.Join(dir, CACertFile))
	if err != nil {
		return nil, err
	}
	var certs []*x509.Certificate
	seen := map[string]bool{}
	add := func(c *x509.Certificate) {
		if k := c.SerialNumber.Text(16); !seen[k] && c.CheckSignatureFrom(ca) == nil {
			seen[k] = true
			certs = append(certs, c)
		}
	}
	cur, err := readCert(filepath.Join(dir, certName))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	if cur != nil {
		add(cur) // even expired: the one asked for by name
	}
	base := strings.TrimSuffix(certName, ".crt")
	paths, err := filepath.Glob(filepath.Join(dir, IssuedDir, base+"-*.crt"))
	if err != nil {
		return nil, err
	}
	for _, p := range paths {
		// "node-h1-<serial>" must not take "node-h1-2-<serial>" (node h1-2) for its own.
		if strings.Contains(strings.TrimPrefix(filepath.Base(p), base+"-"), "-") {
			continue
		}
		c, err := readCert(p)
		if err != nil {
			return nil, err
		}
		if now.Before(c.NotAfter) {
			add(c)
		}
	}
	if len(certs) == 0 {
		return nil, fmt.Errorf("no certificate issued as %s in %s: %w", certName, dir, os.ErrNotExist)
	}
	return certs, nil
}

// writePair writes the key first (0600) and the certificate last, each through a temporary file and
// a rename, so that a crash never leaves a certificate beside a key it does not match.
func writePair(certPath, keyPath string, der []byte, key *ecdsa.PrivateKey) error {
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return fmt.Errorf("encode key %s: %w", keyPath, err)
	}
	if err := writeFileAtomic(keyPath, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		return err
	}
	return writeFileAtomic(certPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644)
}

// WriteFileAtomic writes data to path through a temporary file in the same directory, with mode
// perm from the first byte on (never briefly world-readable), then renames it into place.
func WriteFileAtomic(path string, data []byte, perm os.FileMode) error {
	return writeFileAtomic(path, data, perm)
}

func writeFileAtomic(path string, data []byte, perm os.FileMode) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	tmp := f.Name()
	defer os.Remove(tmp) // a no-op after the rename
	if err := f.Chmod(perm); err != nil {
		f.Close()
		return fmt.Errorf("chmod %s: %w", path, err)
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("sync %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("close %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("install %s: %w", path, err)
	}
	return nil
}

// GossipKeySize is the length of the gossip key: AES-256-GCM, as memberlist's SecretKey takes it.
const GossipKeySize = 32

func ensureGossipKey(path string) (bool, error) {
	if _, err := ReadGossipKey(path); err == nil {
		return false, nil
	} else if !errors.Is(err, os.ErrNotExist) {
		return false, err
	}
	key := make([]byte, GossipKeySize)
	if _, err := rand.Read(key); err != nil {
		return false, fmt.Errorf("generate gossip key: %w", err)
	}
	if err := writeFileAtomic(path, []byte(base64.StdEncoding.EncodeToString(key)+"\n"), 0o600); err != nil {
		return false, err
	}
	return true, nil
}

// ReadGossipKey returns the primary (first) key of the gossip keyring file at path; see
// ReadGossipKeyring. A missing file is an error wrapping os.ErrNotExist.
func ReadGossipKey(path string) ([]byte, error) {
	keys, err := ReadGossipKeyring(path)
	if err != nil {
		return nil, err
	}
	return keys[0], nil
}

// ReadGossipKeyring reads a gossip keyring file: base64 keys, one per line, blank lines and lines
// starting with # skipped, the first key primary. certs init writes one key; servers and agents
// rewrite the file with the keyring a rotation hands out (vxfab gossip rotate).
func ReadGossipKeyring(path string) ([][]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read gossip keyring %s: %w", path, err)
	}
	var keys [][]byte
	for i, line := range strings.Split(string(b), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		k, err := ParseGossipKey(line)
		if err != nil {
			return nil, fmt.Errorf("gossip keyring %s line %d: %w", path, i+1, err)
		}
		keys = append(keys, k)
	}
	if len(keys) == 0 {
		return nil, fmt.Errorf("gossip keyring %s holds no key", path)
	}
	return keys, nil
}

// ParseGossipKey decodes one base64 gossip key (standard or URL alphabet, padding optional), as
// --gossip-key takes it, and checks its length (16, 24 or 32 bytes: AES-128, -192 or -256 in GCM).
func ParseGossipKey(s string) ([]byte, error) {
	s = strings.TrimSpace(s)
	var key []byte
	var err error
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.RawStdEncoding, base64.URLEncoding, base64.RawURLEncoding} {
		if key, err = enc.DecodeString(s); err == nil {
			break
		}
	}
	if err != nil {
		return nil, fmt.Errorf("gossip key is not base64: %w", err)
	}
	if err := ValidGossipKey(key); err != nil {
		return nil, fmt.Errorf("gossip key: %w", err)
	}
	return key, nil
}

// ValidGossipKey checks a gossip key's length: 16, 24 or 32 bytes (AES-128, -192 or -256).
func ValidGossipKey(k []byte) error {
	switch len(k) {
	case 16, 24, 32:
		return nil
	}
	return fmt.Errorf("AES key of %d bytes: want 16, 24 or 32", len(k))
}

func uniq(s []string) []string {
	out := make([]string, 0, len(s))
	for _, v := range s {
		if !slices.Contains(out, v) {
			out = append(out, v)
		}
	}
	return out
}

func uniqIPs(ips []net.IP) []net.IP {
	out := make([]net.IP, 0, len(ips))
	for _, ip := range ips {
		if !slices.ContainsFunc(out, ip.Equal) {
			out = append(out, ip)
		}
	}
	return out
}
