package auth

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/vxfabric/vxfabric/security/pki"
)

// ClientConfig is how an agent (or any program) authenticates to the API server.
type ClientConfig struct {
	// CAFile verifies the server; empty means plaintext, allowed only with Insecure or over a unix
	// socket (the target decides: pass Unix for unix:// targets).
	CAFile string
	// CertFile and KeyFile are the client certificate (an agent's node-<name>.crt), optional.
	CertFile, KeyFile string
	// ServerName overrides the name checked in the server certificate (default: the dialed host;
	// "localhost" for unix sockets, which the certificates of `vxfab certs init` carry).
	ServerName string
	// CRLFile, optional, is the CA's revocation list (`vxfab certs revoke`): a server whose
	// certificate is on it fails the handshake. The file must exist; it is read again when it
	// changes (see pki.Revocations).
	CRLFile string
	// Token is a bearer token sent with every call, optional.
	Token    string
	Insecure bool
	Unix     bool
	// Logger tells when a changed revocation list is taken or refused; nil discards.
	Logger *slog.Logger
}

// DialOptions are the grpc.DialOptions of c. Without a CA it refuses to send credentials in the
// clear over TCP unless Insecure is set.
func (c ClientConfig) DialOptions() ([]grpc.DialOption, error) {
	var opts []grpc.DialOption
	secure := c.CAFile != ""
	switch {
	case secure:
		trust, err := pki.NewTrust(c.CAFile, c.Logger)
		if err != nil {
			return nil, err
		}
		cfg, err := pki.ClientTLSConfig(trust, c.CertFile, c.KeyFile, c.ServerName)
		if err != nil {
			return nil, err
		}
		creds := &clientCreds{cfg: cfg, trust: trust, log: c.Logger}
		if c.CRLFile != "" {
			if creds.rev, err = pki.NewRevocations(c.CRLFile, trust, true, c.Logger); err != nil {
				return nil, fmt.Errorf("server certificate revocation list: %w", err)
			}
			pki.RefuseRevoked(cfg, creds.rev)
		}
		opts = append(opts, grpc.WithTransportCredentials(creds))
	case c.CertFile != "" || c.CRLFile != "":
		return nil, errors.New("a client certificate or a revocation list needs the CA that verifies the server")
	case c.Insecure || c.Unix:
		opts = append(opts, grpc.WithTransportCredentials(insecure.NewCredentials()))
	default:
		return nil, errors.New("no CA to verify the server: give one, or ask for plaintext explicitly (insecure)")
	}
	if c.Token != "" {
		opts = append(opts, grpc.WithPerRPCCredentials(bearerToken{token: c.Token, secure: secure}))
	}
	return opts, nil
}

// bearerToken attaches "authorization: Bearer <token>" to every call.
type bearerToken struct {
	token  string
	secure bool
}

func (b bearerToken) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + b.token}, nil
}

func (b bearerToken) RequireTransportSecurity() bool { return b.secure }

// clientCreds are TLS transport credentials whose CAs follow their file: each handshake verifies
// the server against the CAs the file holds then (pki.WithCurrentRoots), so an agent trusts a CA
// added to its CA file without a restart. A connection stays under watch: once its server's
// certificate is revoked (rev) or its CA leaves the CA file, the connection is closed, so that a
// long Sync stream does not outlive the server's credentials (the next handshake refuses them).
type clientCreds struct {
	cfg   *tls.Config
	trust *pki.Trust
	rev   *pki.Revocations // nil without a revocation list
	log   *slog.Logger
}

// serverCheckInterval is how often an open connection's server certificate is checked again.
const serverCheckInterval = time.Second

func (c *clientCreds) ClientHandshake(ctx context.Context, authority string, raw net.Conn) (net.Conn, credentials.AuthInfo, error) {
	conn, info, err := credentials.NewTLS(pki.WithCurrentRoots(c.cfg, c.trust)).ClientHandshake(ctx, authority, raw)
	if err != nil {
		return conn, info, err
	}
	tlsInfo, ok := info.(credentials.TLSInfo)
	if !ok || len(tlsInfo.State.VerifiedChains) == 0 {
		return conn, info, nil
	}
	w := &watchedConn{Conn: conn, done: make(chan struct{})}
	go w.watch(func() error { return c.refused(tlsInfo.State) }, c.log)
	return w, info, nil
}

// refused tells why the server of an open connection would not be accepted now (nil: it would).
func (c *clientCreds) refused(cs tls.ConnectionState) error {
	if c.rev != nil {
		if err := c.rev.CheckPeer(cs); err != nil {
			return err
		}
	}
	for _, chain := range cs.VerifiedChains {
		if c.trust.Trusts(chain[len(chain)-1]) {
			return nil
		}
	}
	return errors.New("the server's certificate is of a CA no longer in the CA file")
}

// watchedConn is a client connection closed once its server's certificate is refused.
type watchedConn struct {
	net.Conn
	done chan struct{}
	once sync.Once
}

func (w *watchedConn) Close() error {
	w.once.Do(func() { close(w.done) })
	return w.Conn.Close()
}

func (w *watchedConn) watch(refused func() error, log *slog.Logger) {
	t := time.NewTicker(serverCheckInterval)
	defer t.Stop()
	for {
		select {
		case <-w.done:
			return
		case <-t.C:
			if err := refused(); err != nil {
				if log != nil {
					log.Warn("connection closed: the server's certificate is no longer accepted", "server", w.RemoteAddr(), "err", err)
				}
				w.Close()
				return
			}
		}
	}
}

func (c *clientCreds) ServerHandshake(net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return nil, nil, errors.New("client credentials cannot serve")
}

func (c *clientCreds) Info() credentials.ProtocolInfo { return credentials.NewTLS(c.cfg).Info() }

func (c *clientCreds) Clone() credentials.TransportCredentials {
	return &clientCreds{cfg: c.cfg.Clone(), trust: c.trust}
}

// OverrideServerName is deprecated in grpc; it sets the name checked in the server certificate.
func (c *clientCreds) OverrideServerName(name string) error {
	c.cfg = c.cfg.Clone()
	c.cfg.ServerName = name
	return nil
}
