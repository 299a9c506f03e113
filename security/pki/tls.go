package pki

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"sync"
	"time"
)

// LoadCAPool reads a PEM file of one or more CA certificates.
func LoadCAPool(caFile string) (*x509.CertPool, error) {
	cas, err := loadCACerts(caFile)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	for _, c := range cas {
		pool.AddCert(c)
	}
	return pool, nil
}

// loadCACerts reads the certificates of a PEM file of one or more CA certificates.
func loadCACerts(caFile string) ([]*x509.Certificate, error) {
	data, err := os.ReadFile(caFile)
	if err != nil {
		return nil, fmt.Errorf("read CA %s: %w", caFile, err)
	}
	var cas []*x509.Certificate
	for rest := data; ; {
		var block *pem.Block
		if block, rest = pem.Decode(rest); block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("CA file %s: %w", caFile, err)
		}
		cas = append(cas, c)
	}
	if len(cas) == 0 {
		return nil, fmt.Errorf("CA file %s holds no certificate", caFile)
	}
	return cas, nil
}

// ServerTLSConfig is the TLS configuration of the API server: its certificate, and client
// certificates requested and, when presented, verified against caFile (clientAuth
// VerifyClientCertIfGiven). A caller without a certificate still completes the handshake and must
// then present a bearer token; a caller with a certificate the CA did not sign fails the handshake.
func ServerTLSConfig(certFile, keyFile, caFile string) (*tls.Config, error) {
	if certFile == "" || keyFile == "" {
		return nil, errors.New("server TLS needs a certificate and a key")
	}
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("load server certificate %s: %w", certFile, err)
	}
	cfg := &tls.Config{
		Certificates: []tls.Certificate{cert},
		MinVersion:   tls.VersionTLS12,
		ClientAuth:   tls.NoClientCert,
		NextProtos:   []string{"h2"},
	}
	if caFile != "" {
		pool, err := LoadCAPool(caFile)
		if err != nil {
			return nil, err
		}
		cfg.ClientCAs = pool
		cfg.ClientAuth = tls.VerifyClientCertIfGiven
	}
	return cfg, nil
}

// ClientTLSConfig is the TLS configuration of a client (agent, CLI, or the server's etcd client):
// the server is verified against caFile; certFile/keyFile, when given, are presented as the client
// certificate. serverName overrides the name checked in the server certificate (empty: the host
// part of the address dialed).
func ClientTLSConfig(caFile, certFile, keyFile, serverName string) (*tls.Config, error) {
	if caFile == "" {
		return nil, errors.New("client TLS needs the CA that signed the server certificate")
	}
	pool, err := LoadCAPool(caFile)
	if err != nil {
		return nil, err
	}
	cfg := &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12, ServerName: serverName}
	if certFile != "" || keyFile != "" {
		r := &certReloader{certFile: certFile, keyFile: keyFile}
		if _, err := r.get(); err != nil {
			return nil, err
		}
		cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return r.get() }
	}
	return cfg, nil
}

// certReloader presents the certificate its files hold now: a certificate reissued in place (certs
// init after a revocation or before expiry) is used from the next handshake on, without a restart.
type certReloader struct {
	certFile, keyFile string

	mu    sync.Mutex
	stamp [2]time.Time // modification times of the two files when cert was read
	cert  *tls.Certificate
}

// get returns the certificate, read again when a file changed. A pair that cannot be read (a
// rewrite in progress: the key is written before the certificate) keeps the one read before.
func (r *certReloader) get() (*tls.Certificate, error) {
	var stamp [2]time.Time
	for i, f := range []string{r.certFile, r.keyFile} {
		if fi, err := os.Stat(f); err == nil {
			stamp[i] = fi.ModTime()
		}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.cert != nil && stamp == r.stamp {
		return r.cert, nil
	}
	cert, err := tls.LoadX509KeyPair(r.certFile, r.keyFile)
	if err != nil {
		if r.cert != nil {
			return r.cert, nil
		}
		return nil, fmt.Errorf("load client certificate %s: %w", r.certFile, err)
	}
	r.cert, r.stamp = &cert, stamp
	return r.cert, nil
}

// IdentityOfConn is the identity of a TLS peer's client certificate, or KindNone when it presented
// none or it was not verified against the CA (VerifiedChains is filled only by verification).
func IdentityOfConn(cs tls.ConnectionState) Identity {
	if len(cs.VerifiedChains) == 0 || len(cs.VerifiedChains[0]) == 0 {
		return Identity{}
	}
	return IdentityOf(cs.VerifiedChains[0][0])
}
