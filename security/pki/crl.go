package pki

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"
)

// CRLFile is the certificate revocation list `vxfab certs revoke` writes beside the CA, and that the
// server checks client certificates against (by default the one beside its --tls-ca).
const CRLFile = "crl.pem"

// RevokeResult is what Revoke did with one certificate.
type RevokeResult struct {
	Serial  *big.Int
	Already bool // revoked before
}

// Revoke adds certs to the revocation list of the CA in dir (dir/crl.pem, signed with dir/ca.key,
// written anew with the next CRL number). A certificate the CA did not sign is refused.
func Revoke(dir string, certs []*x509.Certificate, now time.Time) ([]RevokeResult, error) {
	certPath, keyPath := filepath.Join(dir, CACertFile), filepath.Join(dir, CAKeyFile)
	caCert, err := readCert(certPath)
	if err != nil {
		return nil, err
	}
	caKey, err := readKey(keyPath)
	if err != nil {
		return nil, err
	}
	path := filepath.Join(dir, CRLFile)
	old, _, err := readCRL(path, []*x509.Certificate{caCert})
	if err != nil {
		return nil, err
	}
	next := &x509.RevocationList{Number: big.NewInt(1), ThisUpdate: now, NextUpdate: now.AddDate(10, 0, 0)}
	revoked := revokedSerials(old)
	if old != nil {
		next.Number.Add(old.Number, big.NewInt(1))
		next.RevokedCertificateEntries = old.RevokedCertificateEntries
	}
	var res []RevokeResult
	for _, c := range certs {
		if err := c.CheckSignatureFrom(caCert); err != nil {
			return nil, fmt.Errorf("certificate %q (serial %x) is not signed by the CA in %s: %w", c.Subject.CommonName, c.SerialNumber, dir, err)
		}
		key := RevocationKey(c.RawIssuer, c.SerialNumber)
		r := RevokeResult{Serial: c.SerialNumber, Already: revoked[key]}
		if !r.Already {
			revoked[key] = true
			next.RevokedCertificateEntries = append(next.RevokedCertificateEntries,
				x509.RevocationListEntry{SerialNumber: c.SerialNumber, RevocationTime: now})
		}
		res = append(res, r)
	}
	der, err := x509.CreateRevocationList(rand.Reader, next, caCert, caKey)
	if err != nil {
		return nil, fmt.Errorf("sign the revocation list: %w", err)
	}
	if err := writeFileAtomic(path, pem.EncodeToMemory(&pem.Block{Type: "X509 CRL", Bytes: der}), 0o644); err != nil {
		return nil, err
	}
	return res, nil
}

// ReadCertFile reads a PEM certificate.
func ReadCertFile(path string) (*x509.Certificate, error) { return readCert(path) }

// readCRL reads a PEM revocation list and checks that one of cas signed it, which it returns; a
// missing file is no list (nil, nil, nil).
func readCRL(path string, cas []*x509.Certificate) (*x509.RevocationList, *x509.Certificate, error) {
	block, err := readPEM(path, "X509 CRL", "X509 CRL")
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil, nil
	}
	if err != nil {
		return nil, nil, fmt.Errorf("read revocation list: %w", err)
	}
	crl, err := x509.ParseRevocationList(block.Bytes)
	if err != nil {
		return nil, nil, fmt.Errorf("parse %s: %w", path, err)
	}
	if crl.Number == nil {
		// Without a number a newer list cannot be told from an older one.
		return nil, nil, fmt.Errorf("%s has no CRL number", path)
	}
	for _, ca := range cas {
		if crl.CheckSignatureFrom(ca) == nil {
			return crl, ca, nil
		}
	}
	return nil, nil, fmt.Errorf("%s: %w", path, errNotSigned)
}

// errNotSigned: a revocation list that no trusted CA signed.
var errNotSigned = errors.New("not signed by the CA")

// issuerID names the CA that signed crl (signer): the key identifier the list carries (which is
// the CA's, for lists vxfab makes), or a digest of the signer's public key for a list without one.
// Servers record it (gossipkeys), so it must not change between releases.
func issuerID(crl *x509.RevocationList, signer *x509.Certificate) string {
	if len(crl.AuthorityKeyId) > 0 {
		return hex.EncodeToString(crl.AuthorityKeyId)
	}
	sum := sha256.Sum256(signer.RawSubjectPublicKeyInfo)
	return hex.EncodeToString(sum[:8])
}

// RevocationKey names a certificate on a revocation list: its issuer and its serial number.
func RevocationKey(rawIssuer []byte, serial *big.Int) string {
	return string(rawIssuer) + "\x00" + serial.String()
}

// revokedSerials is the RevocationKey of each entry of crl (none for nil).
func revokedSerials(crl *x509.RevocationList) map[string]bool {
	out := map[string]bool{}
	if crl == nil {
		return out
	}
	for _, e := range crl.RevokedCertificateEntries {
		out[RevocationKey(crl.RawIssuer, e.SerialNumber)] = true
	}
	return out
}

// Revocations tells whether a client certificate is revoked, from a CRL file that it reads again
// when the file, or the CAs it is checked against, change (it looks at most once a second). Once a
// list is in force, a file that is gone, unreadable, not signed by one of the CAs or older than it
// (a lower CRL number from the same CA) leaves it in force and is logged; a file missing from the
// start revokes nothing. Checks are lock-free: every message of every stream may ask.
type Revocations struct {
	path  string
	trust *Trust
	log   *slog.Logger

	checked atomic.Int64                    // unix ns of the last look at the file
	serials atomic.Pointer[map[string]bool] // RevocationKey of each revoked certificate

	mu     sync.Mutex        // held by the one caller that looks at the file
	stamp  fileStamp         // the file when last read
	cas    *trustSet         // the CAs it was checked against then
	loaded bool              // the file as stamp describes it was read
	number *big.Int          // CRL number of the list in force; nil before one
	signer *x509.Certificate // the CA that signed it
	issuer string            // issuerID of the list
	err    error             // why the file as it is now is not in force
}

// NewRevocations reads the CRL at path, checked against trust's CAs. It fails when the file exists
// but is not a CRL of those CAs, and, with mustExist, when it is missing.
func NewRevocations(path string, trust *Trust, mustExist bool, log *slog.Logger) (*Revocations, error) {
	if trust == nil {
		return nil, errors.New("a revocation list needs the CAs that sign it")
	}
	if _, err := os.Stat(path); mustExist && err != nil {
		return nil, fmt.Errorf("revocation list: %w", err)
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	r := &Revocations{path: path, trust: trust, log: log}
	r.serials.Store(&map[string]bool{})
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.reload(time.Now()); r.err != nil {
		return nil, r.err
	}
	return r, nil
}

// Revoked reports whether cert is on the list in force.
func (r *Revocations) Revoked(cert *x509.Certificate) bool {
	return r.RevokedKey(RevocationKey(cert.RawIssuer, cert.SerialNumber))
}

// RevokedKey reports whether the certificate of RevocationKey key is on the list in force.
func (r *Revocations) RevokedKey(key string) bool {
	r.look()
	return (*r.serials.Load())[key]
}

// InForce describes the list in force: its issuer (the signing CA's key identifier, hex), its CRL
// number (nil before there is a list; numbering starts again with a new CA) and how many
// certificates it revokes.
func (r *Revocations) InForce() (issuer string, number *big.Int, revoked int) {
	r.look()
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.issuer, r.number, len(*r.serials.Load())
}

// look reads the file again if it may have changed: at most once a second, and not while another
// caller is at it.
func (r *Revocations) look() {
	if now := time.Now(); now.UnixNano()-r.checked.Load() >= int64(lookInterval) && r.mu.TryLock() {
		r.reload(now)
		r.mu.Unlock()
	}
}

// Err is why the CRL file as it is now is not in force (nil when it is).
func (r *Revocations) Err() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.err
}

// reload reads the file again if it, or the CAs, changed since the last look. r.mu is held.
//
// A list of another CA than the one in force replaces it whatever its number (a new CA numbers its
// lists anew), but only once the CA of the list in force is no longer trusted: while it is, its
// certificates still verify, and only its list keeps the revoked ones out. That also keeps a
// stale list of a CA from coming back over a newer one while two CAs are trusted.
func (r *Revocations) reload(now time.Time) {
	r.checked.Store(now.UnixNano())
	stamp, cas := stampOf(r.path), r.trust.current()
	if r.loaded && stamp == r.stamp && cas == r.cas {
		return
	}
	fileChanged := !r.loaded || stamp != r.stamp
	r.stamp, r.cas, r.loaded = stamp, cas, true
	crl, signer, err := readCRL(r.path, cas.cas)
	issuer := ""
	if err == nil && crl != nil {
		issuer = issuerID(crl, signer)
	}
	switch {
	case errors.Is(err, errNotSigned) && !fileChanged && r.number != nil:
		err = fmt.Errorf("the CA file %s no longer holds the CA that signed %s (number %s), which stays in force until a list of a CA in the file replaces it", r.trust.path, r.path, r.number)
	case err == nil && crl == nil && r.number != nil:
		err = fmt.Errorf("%s is gone", r.path)
	case err == nil && crl != nil && r.number != nil && issuer == r.issuer && crl.Number.Cmp(r.number) < 0:
		err = fmt.Errorf("%s has CRL number %s, older than the list in force (%s)", r.path, crl.Number, r.number)
	case err == nil && crl != nil && r.number != nil && issuer != r.issuer && cas.keys[caKey(r.signer)]:
		err = fmt.Errorf("%s is signed by another CA than the list in force, whose CA is still in %s: "+
			"a list of another CA is taken once that CA is dropped from the CA file", r.path, r.trust.path)
	}
	if err != nil {
		r.err = err
		r.log.Warn("revocation list not taken: the last one stays in force", "err", err)
		return
	}
	r.err = nil
	if crl == nil {
		return // none yet
	}
	if !fileChanged && r.number != nil && crl.Number.Cmp(r.number) == 0 && issuer == r.issuer {
		return // the same list, read again because the CAs changed
	}
	serials := revokedSerials(crl)
	r.serials.Store(&serials)
	r.number, r.signer, r.issuer = crl.Number, signer, issuer
	r.log.Info("revocation list in force", "path", r.path, "number", crl.Number, "revoked", len(serials))
}

// revokedIn is the RevocationKey of each certificate the CRL in dir lists (Init issues those anew).
func revokedIn(dir string, ca *x509.Certificate) map[string]bool {
	crl, _, err := readCRL(filepath.Join(dir, CRLFile), []*x509.Certificate{ca})
	if err != nil {
		return map[string]bool{}
	}
	return revokedSerials(crl)
}

// ErrRevoked marks a peer whose certificate is on the revocation list in force.
var ErrRevoked = errors.New("certificate revoked")

// CheckPeer returns an error wrapping ErrRevoked when the verified certificate of a TLS peer is on
// the list in force (nil for a peer without one: verification decides about those).
func (r *Revocations) CheckPeer(cs tls.ConnectionState) error {
	if len(cs.VerifiedChains) == 0 || len(cs.VerifiedChains[0]) == 0 {
		return nil
	}
	if leaf := cs.VerifiedChains[0][0]; r.Revoked(leaf) {
		return fmt.Errorf("%q (serial %x): %w", leaf.Subject.CommonName, leaf.SerialNumber, ErrRevoked)
	}
	return nil
}

// RefuseRevoked makes every handshake of cfg fail whose peer certificate is on r's list: on a
// client's configuration, the server's certificate. A connection kept open is not checked again:
// its user asks CheckPeer.
func RefuseRevoked(cfg *tls.Config, r *Revocations) {
	cfg.VerifyConnection = r.CheckPeer
}
