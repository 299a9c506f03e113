package pki

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// lookInterval is how often a file that is read again when it changes (a CA file, a revocation
// list) is looked at, at most.
const lookInterval = time.Second

// fileStamp tells that a file changed: its modification time and size (zero: no file).
type fileStamp struct{ mod, size int64 }

func stampOf(path string) fileStamp {
	fi, err := os.Stat(path)
	if err != nil {
		return fileStamp{}
	}
	return fileStamp{fi.ModTime().UnixNano(), fi.Size()}
}

// Trust is the CA certificates of a PEM file, read again when the file changes (looked at at most
// once a second), so that a CA added to the file (the first step of moving to a new CA) is trusted
// without a restart. A file that is gone or holds no certificate leaves the CAs read before in
// force, logged. Lookups are lock-free: every handshake asks.
type Trust struct {
	path string
	log  *slog.Logger

	checked atomic.Int64 // unix ns of the last look at the file
	set     atomic.Pointer[trustSet]

	mu    sync.Mutex // held by the one caller that looks at the file
	stamp fileStamp  // the file when set was read
}

// trustSet is one reading of a Trust's file. A new reading is a new set: a pointer tells them apart.
type trustSet struct {
	cas  []*x509.Certificate
	pool *x509.CertPool
	keys map[string]bool // caKey of each CA
}

// caKey identifies a CA by its name and public key: a CA certificate renewed with the same key (a
// new validity) is the same CA.
func caKey(ca *x509.Certificate) string {
	return string(ca.RawSubject) + "\x00" + string(ca.RawSubjectPublicKeyInfo)
}

// NewTrust reads the CA certificates in caFile; it fails when the file holds none.
func NewTrust(caFile string, log *slog.Logger) (*Trust, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	t := &Trust{path: caFile, log: log, stamp: stampOf(caFile)}
	set, err := readTrust(caFile)
	if err != nil {
		return nil, err
	}
	t.set.Store(set)
	t.checked.Store(time.Now().UnixNano())
	return t, nil
}

func readTrust(caFile string) (*trustSet, error) {
	cas, err := loadCACerts(caFile)
	if err != nil {
		return nil, err
	}
	set := &trustSet{cas: cas, pool: x509.NewCertPool(), keys: make(map[string]bool, len(cas))}
	for _, c := range cas {
		set.pool.AddCert(c)
		set.keys[caKey(c)] = true
	}
	return set, nil
}

// Path is the CA file.
func (t *Trust) Path() string { return t.path }

// Pool is the CAs the file holds (as last read).
func (t *Trust) Pool() *x509.CertPool { return t.current().pool }

// Trusts reports whether ca is one of the CAs the file holds (the same name and key: see caKey): a
// chain verified against a CA since dropped from the file is no longer trusted.
func (t *Trust) Trusts(ca *x509.Certificate) bool { return t.current().keys[caKey(ca)] }

// current is the set in force, read again first if the file may have changed.
func (t *Trust) current() *trustSet {
	if now := time.Now(); now.UnixNano()-t.checked.Load() >= int64(lookInterval) && t.mu.TryLock() {
		t.checked.Store(now.UnixNano())
		if stamp := stampOf(t.path); stamp != t.stamp {
			t.stamp = stamp
			if set, err := readTrust(t.path); err != nil {
				t.log.Warn("CA file not taken: the CAs read before stay trusted", "err", err)
			} else {
				t.set.Store(set)
				t.log.Info("CA file read again", "path", t.path, "cas", len(set.cas))
			}
		}
		t.mu.Unlock()
	}
	return t.set.Load()
}

// WithCurrentRoots is cfg (a client's configuration) verifying servers against the CAs trust holds
// now: cfg itself while they are the ones it has, else a copy with them.
func WithCurrentRoots(cfg *tls.Config, trust *Trust) *tls.Config {
	if pool := trust.Pool(); pool != cfg.RootCAs {
		cfg = cfg.Clone()
		cfg.RootCAs = pool
	}
	return cfg
}

// certReloader presents the certificate its files hold now: a certificate reissued in place (certs
// init after a revocation or before expiry) is used from the next handshake on, without a restart.
type certReloader struct {
	certFile, keyFile string
	log               *slog.Logger

	mu     sync.Mutex
	stamp  [2]fileStamp // the two files when cert was read
	cert   *tls.Certificate
	failed [2]fileStamp // the two files when they last could not be read as a pair
}

// get returns the certificate, read again when a file changed. A pair that cannot be read (a
// rewrite in progress: the key is written before the certificate; a key that does not match)
// keeps the one read before, with a warning once for each state of the files.
func (r *certReloader) get() (*tls.Certificate, error) {
	stamp := [2]fileStamp{stampOf(r.certFile), stampOf(r.keyFile)}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.cert != nil && (stamp == r.stamp || stamp == r.failed) {
		return r.cert, nil
	}
	cert, err := tls.LoadX509KeyPair(r.certFile, r.keyFile)
	if err != nil {
		err = fmt.Errorf("load certificate %s: %w", r.certFile, err)
		if r.cert != nil {
			r.failed = stamp
			r.log.Warn("certificate files not taken: the certificate read before stays in use", "err", err)
			return r.cert, nil
		}
		return nil, err
	}
	r.cert, r.stamp = &cert, stamp
	return r.cert, nil
}
