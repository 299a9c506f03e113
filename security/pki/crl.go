package pki

import (
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
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
	old, err := readCRL(path, []*x509.Certificate{caCert})
	if err != nil {
		return nil, err
	}
	next := &x509.RevocationList{Number: big.NewInt(1), ThisUpdate: now, NextUpdate: now.AddDate(10, 0, 0)}
	revoked := map[string]bool{}
	if old != nil {
		next.Number.Add(old.Number, big.NewInt(1))
		next.RevokedCertificateEntries = old.RevokedCertificateEntries
		for _, e := range old.RevokedCertificateEntries {
			revoked[e.SerialNumber.String()] = true
		}
	}
	var res []RevokeResult
	for _, c := range certs {
		if err := c.CheckSignatureFrom(caCert); err != nil {
			return nil, fmt.Errorf("certificate %q (serial %x) is not signed by the CA in %s: %w", c.Subject.CommonName, c.SerialNumber, dir, err)
		}
		r := RevokeResult{Serial: c.SerialNumber, Already: revoked[c.SerialNumber.String()]}
		if !r.Already {
			revoked[c.SerialNumber.String()] = true
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

// readCRL reads a PEM revocation list and checks that one of cas signed it; a missing file is no
// list (nil, nil).
func readCRL(path string, cas []*x509.Certificate) (*x509.RevocationList, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read revocation list: %w", err)
	}
	block, _ := pem.Decode(data)
	if block == nil || block.Type != "X509 CRL" {
		return nil, fmt.Errorf("%s holds no PEM X509 CRL", path)
	}
	crl, err := x509.ParseRevocationList(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("parse %s: %w", path, err)
	}
	for _, ca := range cas {
		if crl.CheckSignatureFrom(ca) == nil {
			return crl, nil
		}
	}
	return nil, fmt.Errorf("%s is not signed by the CA", path)
}

// Revocations tells whether a client certificate is revoked, from a CRL file that it reads again
// when the file changes (it looks at most once a second). A list that cannot be read or is not
// signed by the CA leaves the last good one in force; a missing file revokes nothing. Checks are
// lock-free: every message of every stream may ask.
type Revocations struct {
	path string
	cas  []*x509.Certificate

	checked atomic.Int64                    // unix ns of the last look at the file
	serials atomic.Pointer[map[string]bool] // SerialKey of each revoked certificate

	mu     sync.Mutex // held by the one caller that looks at the file
	stamp  [2]int64   // the file's modification time and size when last read
	loaded bool       // the file as stamp describes it was read
	err    error      // why the file as it is now is not in force
}

// NewRevocations reads the CRL at path, checked against the CA certificates in caFile. It fails
// when the file exists but is not a CRL of that CA.
func NewRevocations(path, caFile string) (*Revocations, error) {
	data, err := os.ReadFile(caFile)
	if err != nil {
		return nil, fmt.Errorf("read CA %s: %w", caFile, err)
	}
	r := &Revocations{path: path}
	for rest := data; ; {
		var block *pem.Block
		if block, rest = pem.Decode(rest); block == nil {
			break
		}
		if c, err := x509.ParseCertificate(block.Bytes); err == nil {
			r.cas = append(r.cas, c)
		}
	}
	if len(r.cas) == 0 {
		return nil, fmt.Errorf("CA file %s holds no certificate", caFile)
	}
	r.serials.Store(&map[string]bool{})
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.reload(time.Now()); r.err != nil {
		return nil, r.err
	}
	return r, nil
}

// SerialKey is how Revocations names a certificate (compute it once for repeated checks).
func SerialKey(cert *x509.Certificate) string { return string(cert.SerialNumber.Bytes()) }

// Revoked reports whether cert is on the list in force.
func (r *Revocations) Revoked(cert *x509.Certificate) bool { return r.RevokedKey(SerialKey(cert)) }

// RevokedKey reports whether the certificate of SerialKey key is on the list in force.
func (r *Revocations) RevokedKey(key string) bool {
	if now := time.Now(); now.UnixNano()-r.checked.Load() >= int64(time.Second) && r.mu.TryLock() {
		r.reload(now)
		r.mu.Unlock()
	}
	return (*r.serials.Load())[key]
}

// Err is why the CRL file as it is now is not in force (nil when it is).
func (r *Revocations) Err() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.err
}

// reload reads the file again if it changed since the last look. r.mu is held.
func (r *Revocations) reload(now time.Time) {
	r.checked.Store(now.UnixNano())
	var stamp [2]int64 // zero: no file
	if fi, err := os.Stat(r.path); err == nil {
		stamp = [2]int64{fi.ModTime().UnixNano(), fi.Size()}
	}
	if r.loaded && stamp == r.stamp {
		return
	}
	r.stamp, r.loaded = stamp, true
	crl, err := readCRL(r.path, r.cas)
	if err != nil {
		r.err = err // the last good list stays in force
		return
	}
	serials := map[string]bool{}
	if crl != nil {
		for _, e := range crl.RevokedCertificateEntries {
			serials[string(e.SerialNumber.Bytes())] = true
		}
	}
	r.serials.Store(&serials)
	r.err = nil
}

// revokedIn is the serials the CRL in dir lists (Init issues those certificates anew).
func revokedIn(dir string, ca *x509.Certificate) map[string]bool {
	crl, err := readCRL(filepath.Join(dir, CRLFile), []*x509.Certificate{ca})
	out := map[string]bool{}
	if err != nil || crl == nil {
		return out
	}
	for _, e := range crl.RevokedCertificateEntries {
		out[e.SerialNumber.String()] = true
	}
	return out
}
