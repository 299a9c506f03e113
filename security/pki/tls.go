package pki

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync/atomic"
)

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
			if bytes.Contains(rest, []byte("-----BEGIN")) {
				// A block cut short: the file is being written, not a file of fewer CAs.
				return nil, fmt.Errorf("CA file %s ends in an incomplete PEM block", caFile)
			}
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
// certificates requested and, when presented, verified against trust's CAs (clientAuth
// VerifyClientCertIfGiven). A caller without a certificate still completes the handshake and must
// then present a bearer token; a caller with a certificate the CAs did not sign fails the handshake.
// Nothing needs a restart: each handshake presents the certificate the files hold then (one renewed
// by certs init) and verifies against the CAs trust holds then.
func ServerTLSConfig(certFile, keyFile string, trust *Trust, log *slog.Logger) (*tls.Config, error) {
	if certFile == "" || keyFile == "" {
		return nil, errors.New("server TLS needs a certificate and a key")
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	own := &certReloader{certFile: certFile, keyFile: keyFile, log: log}
	if _, err := own.get(); err != nil {
		return nil, err
	}
	cfg := &tls.Config{
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return own.get() },
		MinVersion:     tls.VersionTLS12,
		ClientAuth:     tls.NoClientCert,
		NextProtos:     []string{"h2"},
	}
	if trust != nil {
		cfg.ClientCAs = trust.Pool()
		cfg.ClientAuth = tls.VerifyClientCertIfGiven
		// Once the CA file changed, a copy with its CAs, made at the first handshake after the
		// change (RefuseRevoked sets more of cfg after this returns).
		var copied atomic.Pointer[tls.Config]
		cfg.GetConfigForClient = func(*tls.ClientHelloInfo) (*tls.Config, error) {
			pool := trust.Pool()
			if pool == cfg.ClientCAs {
				return nil, nil
			}
			if c := copied.Load(); c != nil && c.ClientCAs == pool {
				return c, nil
			}
			c := cfg.Clone()
			c.ClientCAs = pool
			copied.Store(c)
			return c, nil
		}
	}
	return cfg, nil
}

// ClientTLSConfig is the TLS configuration of a client (an agent, the CLI):
// the server is verified against trust's CAs as they are now (WithCurrentRoots follows the file);
// certFile/keyFile, when given, are presented as the client certificate, read again when they
// change. serverName overrides the name checked in the server certificate (empty: the host part of
// the address dialed).
func ClientTLSConfig(trust *Trust, certFile, keyFile, serverName string) (*tls.Config, error) {
	if trust == nil {
		return nil, errors.New("client TLS needs the CA that signed the server certificate")
	}
	cfg := &tls.Config{RootCAs: trust.Pool(), MinVersion: tls.VersionTLS12, ServerName: serverName}
	if certFile != "" || keyFile != "" {
		r := &certReloader{certFile: certFile, keyFile: keyFile, log: trust.log}
		if _, err := r.get(); err != nil {
			return nil, err
		}
		cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return r.get() }
	}
	return cfg, nil
}

// IdentityOfConn is the identity of a TLS peer's client certificate, or KindNone when it presented
// none or it was not verified against the CA (VerifiedChains is filled only by verification).
func IdentityOfConn(cs tls.ConnectionState) Identity {
	if len(cs.VerifiedChains) == 0 || len(cs.VerifiedChains[0]) == 0 {
		return Identity{}
	}
	return IdentityOf(cs.VerifiedChains[0][0])
}
