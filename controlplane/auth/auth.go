// Package auth authenticates and authorises every call to the API server: it owns the server's
// transport credentials (TLS, with client certificates verified against the CA when presented),
// the admin token file, tenant tokens (stored hashed under /vxfabric/v1/tokens/) and the TokenService,
// and the unary and stream interceptors that decide, per method, who may call it.
//
// Who may do what (see policy.go for the table):
//   - admin (the admin bearer token, or the admin client certificate): everything;
//   - a node agent (client certificate vxfab://node/<N>): AgentService only, and only for node N;
//   - a tenant token: NetworkService and PortService for its own tenant (an empty tenant field is
//     filled with it, another tenant is PermissionDenied, lists are confined to it), GetTenant of its
//     own tenant; nothing else, and no BRIDGED networks;
//   - no credentials: health and reflection only, everything else is Unauthenticated.
//
// It must never let a request through on an error: every failure to establish who is calling
// ends the call. It never writes any key but its own tokens.
package auth

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/spf13/pflag"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/vxfabric/vxfabric/controlplane/api"
	vxfabricv1 "github.com/vxfabric/vxfabric/proto/vxfabric/v1"
	"github.com/vxfabric/vxfabric/security/pki"
)

// Config is the server side of authentication.
type Config struct {
	// TLSCert and TLSKey are the server certificate. Empty (and not Insecure): the server makes its
	// own CA and certificates under <DataDir>/pki on first start (pki.Init) and uses those.
	TLSCert string
	TLSKey  string
	// TLSCA verifies client certificates (agents, admin). Empty with TLSCert given: certificates are
	// not accepted as credentials, only tokens.
	TLSCA string
	// TLSCRL is the revocation list of client certificates (as `vxfab certs revoke` writes it), read
	// again within a second of a change; it must exist. Default: none, or for a server that made its
	// own PKI, <data-dir>/pki/crl.pem once there is one.
	TLSCRL string
	// TLSSANs are extra names or addresses of the server certificate made under <DataDir>/pki.
	TLSSANs []string
	// Insecure serves plaintext on TCP (TLS is still accepted when a certificate is configured).
	Insecure bool
	// AdminTokenFile holds the admin bearer token; written (0600, random) on first start.
	// Default <DataDir>/admin.token.
	AdminTokenFile string
	// DataDir is the server's data directory, for the defaults above.
	DataDir string

	// MaxRecvMsgSize bounds one request message. Default 1 MiB.
	MaxRecvMsgSize int
	// MaxConcurrentStreams bounds the calls in flight on one connection. Default 128.
	MaxConcurrentStreams uint32
	// TokenCacheTTL is how long a tenant-token lookup is trusted before etcd is asked again: the
	// bound on how late a revocation made on another replica takes effect. Default 500 ms.
	TokenCacheTTL time.Duration
	Logger        *slog.Logger
}

// Default returns the configuration of a server whose data lives in dataDir.
func Default(dataDir string) Config {
	return Config{
		DataDir:              dataDir,
		MaxRecvMsgSize:       1 << 20,
		MaxConcurrentStreams: 128,
		TokenCacheTTL:        500 * time.Millisecond,
	}
}

// AddFlags binds the server's security flags to fs and returns the Config they fill. The caller
// sets DataDir (and Logger) after parsing.
func AddFlags(fs *pflag.FlagSet) *Config {
	cfg := Default("")
	fs.StringVar(&cfg.TLSCert, "tls-cert", "", "server certificate, read again when it changes (default: made with its own CA under <data-dir>/pki on first start, renewed before it expires)")
	fs.StringVar(&cfg.TLSKey, "tls-key", "", "server key")
	fs.StringVar(&cfg.TLSCA, "tls-ca", "", "CAs that sign agent and admin client certificates, read again within a second of a change (default <data-dir>/pki/ca.crt when the server made its own PKI)")
	fs.StringVar(&cfg.TLSCRL, "tls-crl", "", "revocation list of --tls-ca's client certificates, as \"vxfab certs revoke\" writes it, read again within a second of a change (default: <data-dir>/pki/crl.pem when the server made its own PKI)")
	fs.StringSliceVar(&cfg.TLSSANs, "tls-san", nil, "extra DNS names or IPs of the server certificate the server makes for itself")
	fs.BoolVar(&cfg.Insecure, "insecure", false, "also serve plaintext gRPC on TCP (unsafe: tokens cross the network in the clear)")
	fs.StringVar(&cfg.AdminTokenFile, "admin-token-file", "", "admin bearer token, written on first start if missing (default <data-dir>/admin.token)")
	fs.IntVar(&cfg.MaxRecvMsgSize, "max-request-bytes", cfg.MaxRecvMsgSize, "largest request message accepted")
	return &cfg
}

// Validate reports a configuration that cannot serve.
func (c Config) Validate() error {
	if (c.TLSCert == "") != (c.TLSKey == "") {
		return errors.New("--tls-cert and --tls-key go together")
	}
	if c.AdminTokenFile == "" && c.DataDir == "" {
		return errors.New("an admin token file or a data directory is required")
	}
	if c.TLSCert == "" && !c.Insecure && c.DataDir == "" {
		return errors.New("TLS needs --tls-cert/--tls-key, or a data directory to make them in")
	}
	if c.TLSCRL != "" && c.TLSCA == "" && c.TLSCert != "" {
		return errors.New("--tls-crl needs --tls-ca: it lists client certificates of that CA")
	}
	if c.MaxRecvMsgSize < 4096 {
		return fmt.Errorf("max request size %d is below 4096 bytes", c.MaxRecvMsgSize)
	}
	if c.MaxConcurrentStreams == 0 {
		return errors.New("max concurrent streams must be positive")
	}
	if c.TokenCacheTTL <= 0 || c.TokenCacheTTL > time.Second {
		return fmt.Errorf("token cache TTL %s: want (0, 1s] so that revocation takes effect within a second", c.TokenCacheTTL)
	}
	for _, s := range c.TLSSANs {
		if s == "" || strings.ContainsAny(s, " /\\") {
			return fmt.Errorf("--tls-san %q is neither a DNS name nor an IP address", s)
		}
	}
	return nil
}

// Authenticator holds the credentials and tokens of one API server.
type Authenticator struct {
	cfg       Config
	log       *slog.Logger
	tokens    *tokenStore
	adminHash [sha256.Size]byte
	creds     *serverCreds
	// trust is the CAs of client certificates (nil without a client CA); revoked lists the client
	// certificates refused (nil without a list).
	trust   *pki.Trust
	revoked *pki.Revocations
	// ownPKI is the PKI the server made for itself (nil with --tls-cert): renewPKI keeps its
	// certificates from expiring.
	ownPKI *pki.InitConfig
}

// New loads (or creates) the server's certificates and admin token. cli reaches the etcd that holds
// tenant tokens.
func New(cfg Config, cli *clientv3.Client) (*Authenticator, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.AdminTokenFile == "" && cfg.DataDir != "" {
		cfg.AdminTokenFile = filepath.Join(cfg.DataDir, "admin.token")
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cli == nil {
		return nil, errors.New("auth needs an etcd client")
	}
	log := cfg.Logger
	a := &Authenticator{cfg: cfg, log: log, tokens: newTokenStore(cli, cfg.TokenCacheTTL)}

	ownCA := false // the client CA is the one the server made for itself
	if cfg.TLSCert == "" && !cfg.Insecure {
		dir := filepath.Join(cfg.DataDir, "pki")
		pkiCfg := pki.DefaultInit(dir)
		pkiCfg.Logger = log
		for _, san := range cfg.TLSSANs {
			if ip := net.ParseIP(san); ip != nil {
				pkiCfg.ServerIPs = append(pkiCfg.ServerIPs, ip)
			} else {
				pkiCfg.ServerNames = append(pkiCfg.ServerNames, san)
			}
		}
		if host, err := os.Hostname(); err == nil && host != "" {
			pkiCfg.ServerNames = append(pkiCfg.ServerNames, host)
		}
		if _, err := pki.Init(pkiCfg); err != nil {
			return nil, fmt.Errorf("make the server's own PKI: %w", err)
		}
		a.ownPKI = &pkiCfg
		cfg.TLSCert, cfg.TLSKey = filepath.Join(dir, pki.ServerCert), filepath.Join(dir, pki.ServerKey)
		if cfg.TLSCA == "" {
			cfg.TLSCA, ownCA = filepath.Join(dir, pki.CACertFile), true
		}
		log.Info("serving with the server's own CA", "dir", dir)
		a.cfg = cfg
	}
	var tlsCfg *tls.Config
	if cfg.TLSCert != "" {
		var err error
		if cfg.TLSCA != "" {
			if a.trust, err = pki.NewTrust(cfg.TLSCA, log); err != nil {
				return nil, err
			}
		}
		if tlsCfg, err = pki.ServerTLSConfig(cfg.TLSCert, cfg.TLSKey, a.trust, log); err != nil {
			return nil, err
		}
		crl, explicit := cfg.TLSCRL, cfg.TLSCRL != ""
		if ownCA && !explicit {
			crl = filepath.Join(filepath.Dir(cfg.TLSCA), pki.CRLFile)
		}
		if crl != "" {
			if a.revoked, err = pki.NewRevocations(crl, a.trust, explicit, log); err != nil {
				return nil, fmt.Errorf("client certificate revocation list: %w", err)
			}
			pki.RefuseRevoked(tlsCfg, a.revoked)
		}
		if cfg.TLSCA == "" {
			log.Warn("no --tls-ca: client certificates are not accepted, so no agent can connect (agents authenticate with their node certificate); only token callers can")
		}
	}
	if cfg.Insecure {
		log.Warn("serving plaintext gRPC on TCP (--insecure): bearer tokens cross the network unencrypted")
	}
	a.creds = newServerCreds(tlsCfg, cfg.Insecure)

	token, err := ensureAdminToken(cfg.AdminTokenFile, log)
	if err != nil {
		return nil, err
	}
	a.adminHash = sha256.Sum256([]byte(token))
	return a, nil
}

// pkiRenewInterval is how often a server that made its own PKI checks it for certificates to renew
// (certs init renews those with less than 30 days left).
const pkiRenewInterval = 12 * time.Hour

// renewPKI renews what is about to expire in the server's own PKI, as certs init does at each start,
// every interval until ctx ends. The server presents a renewed certificate from the next handshake
// on, so a server that runs for longer than its certificate is valid keeps serving.
func (a *Authenticator) renewPKI(ctx context.Context, interval time.Duration) {
	if a.ownPKI == nil {
		return
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			a.renewPKIOnce()
		}
	}
}

// renewPKIOnce is one check of renewPKI. It leaves alone a server certificate that the directory's
// CA did not sign (an admin moving the server to another CA put it there).
func (a *Authenticator) renewPKIOnce() {
	due, err := pki.RenewalDue(a.ownPKI.Dir, pki.ServerCert, time.Now())
	if err != nil {
		a.log.Warn("the server's certificate is not renewed here: renew it by hand", "err", err)
		return
	}
	if !due {
		return
	}
	results, err := pki.Init(*a.ownPKI)
	if err != nil {
		a.log.Error("the server's own PKI cannot be renewed", "dir", a.ownPKI.Dir, "err", err)
		return
	}
	for _, r := range results {
		switch {
		case !r.Created:
		case filepath.Base(r.Path) == pki.ServerCert:
			a.log.Info("server certificate renewed: new connections get it", "file", r.Path)
		default:
			a.log.Warn("renewed in the server's own PKI: hosts that use a copy of it need the new one", "file", r.Path)
		}
	}
}

// AdminTokenFile is where the admin token is (the default resolved).
func (a *Authenticator) AdminTokenFile() string { return a.cfg.AdminTokenFile }

// CAFile is the CA that client certificates must chain to, and that clients verify the server
// with when the server made its own PKI ("" when none).
func (a *Authenticator) CAFile() string { return a.cfg.TLSCA }

// ServerOptions are the grpc.ServerOptions of the API server: transport credentials, the auth
// interceptors (first in the chain), and limits that keep one client from starving the others.
func (a *Authenticator) ServerOptions() []grpc.ServerOption {
	return []grpc.ServerOption{
		grpc.Creds(a.creds),
		grpc.ChainUnaryInterceptor(a.UnaryInterceptor),
		grpc.ChainStreamInterceptor(a.StreamInterceptor),
		grpc.MaxRecvMsgSize(a.cfg.MaxRecvMsgSize),
		grpc.MaxConcurrentStreams(a.cfg.MaxConcurrentStreams),
		// Headers are small (a bearer token); the default would let a client send 16 MB of them.
		grpc.MaxHeaderListSize(64 << 10),
		// A connection that has not finished its TLS handshake after 10 s is dropped.
		grpc.ConnectionTimeout(10 * time.Second),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 10 * time.Second, PermitWithoutStream: true}),
		grpc.KeepaliveParams(keepalive.ServerParameters{
			// Dead peers (a host cut off) are found within 40 s; idle connections are closed.
			Time:              30 * time.Second,
			Timeout:           10 * time.Second,
			MaxConnectionIdle: 10 * time.Minute,
		}),
		grpc.SharedWriteBuffer(true),
	}
}

// Register adds the TokenService to s.
func (a *Authenticator) Register(s *grpc.Server) {
	vxfabricv1.RegisterTokenServiceServer(s, &tokenService{tokens: a.tokens, log: a.log})
}

// ensureAdminToken reads the admin token, writing a new random one first if the file is missing.
func ensureAdminToken(path string, log *slog.Logger) (string, error) {
	data, err := os.ReadFile(path)
	switch {
	case err == nil:
		token := strings.TrimSpace(string(data))
		if len(token) < 16 {
			return "", fmt.Errorf("admin token file %s: token shorter than 16 characters", path)
		}
		if st, err := os.Stat(path); err == nil && st.Mode().Perm()&0o077 != 0 {
			log.Warn("admin token file is readable by others", "path", path, "mode", st.Mode().Perm().String())
		}
		log.Info("admin token loaded", "path", path)
		return token, nil
	case !errors.Is(err, os.ErrNotExist):
		return "", fmt.Errorf("read admin token %s: %w", path, err)
	}
	raw := make([]byte, secretBytes)
	if _, err := rand.Read(raw); err != nil {
		return "", fmt.Errorf("generate admin token: %w", err)
	}
	token := "vxfa_" + base64.RawURLEncoding.EncodeToString(raw)
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return "", fmt.Errorf("create directory of admin token %s: %w", path, err)
	}
	if err := pki.WriteFileAtomic(path, []byte(token+"\n"), 0o600); err != nil {
		return "", fmt.Errorf("write admin token: %w", err)
	}
	log.Info("admin token written", "path", path)
	return token, nil
}

type identityKey struct{}

// FromContext returns the identity the interceptors established for this call.
func FromContext(ctx context.Context) (Identity, bool) {
	id, ok := ctx.Value(identityKey{}).(Identity)
	return id, ok
}

// identify establishes who calls method: a bearer token if one is presented (it wins over a
// certificate), else a verified client certificate, else nobody.
func (a *Authenticator) identify(ctx context.Context, method string) (Identity, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	if vals := md.Get("authorization"); len(vals) > 0 {
		if len(vals) > 1 {
			return Identity{}, status.Error(codes.Unauthenticated, "more than one authorization header")
		}
		token, ok := strings.CutPrefix(vals[0], "Bearer ")
		if !ok || token == "" {
			return Identity{}, status.Error(codes.Unauthenticated, `authorization header: want "Bearer <token>"`)
		}
		return a.identifyToken(ctx, token, tenantWrite(method))
	}
	if p, ok := peer.FromContext(ctx); ok {
		if info, ok := p.AuthInfo.(credentials.TLSInfo); ok {
			if refused := a.certRefused(info.State); refused != nil {
				if err := refused(); err != nil {
					return Identity{}, err
				}
			}
			switch id := pki.IdentityOfConn(info.State); id.Kind {
			case pki.KindAdmin:
				return Identity{Role: RoleAdmin, Via: "certificate"}, nil
			case pki.KindNode:
				return Identity{Role: RoleNode, Node: id.Name, Via: "certificate"}, nil
			}
		}
	}
	return Identity{}, nil
}

var (
	errRevoked   = status.Error(codes.Unauthenticated, "client certificate revoked")
	errUntrusted = status.Error(codes.Unauthenticated, "client certificate of a CA no longer trusted")
)

// certRefused is the check of a connection's verified client certificate against the CAs and the
// revocation list as they are when it is called: errRevoked once the certificate is on the list,
// errUntrusted once no CA it was verified against is in the CA file any more. The handshake checked
// both; a connection outlives changes to either, and each call and stream message asks again. It
// is nil for a connection without a verified certificate.
func (a *Authenticator) certRefused(cs tls.ConnectionState) func() error {
	if len(cs.VerifiedChains) == 0 || a.trust == nil {
		return nil
	}
	leaf := cs.VerifiedChains[0][0]
	key := pki.RevocationKey(leaf.RawIssuer, leaf.SerialNumber)
	roots := make([]*x509.Certificate, len(cs.VerifiedChains))
	for i, chain := range cs.VerifiedChains {
		roots[i] = chain[len(chain)-1]
	}
	return func() error {
		if a.revoked != nil && a.revoked.RevokedKey(key) {
			return errRevoked
		}
		if !slices.ContainsFunc(roots, a.trust.Trusts) {
			return errUntrusted
		}
		return nil
	}
}

// identifyToken maps a bearer token to its caller. A tenant token is looked up in etcd afresh for a
// call that writes (fresh), so that a token revoked, or gone with its tenant, writes nothing even
// within the lookup cache's lifetime.
func (a *Authenticator) identifyToken(ctx context.Context, token string, fresh bool) (Identity, error) {
	sum := sha256.Sum256([]byte(token))
	if subtle.ConstantTimeCompare(sum[:], a.adminHash[:]) == 1 {
		return Identity{Role: RoleAdmin, Via: "token"}, nil
	}
	rec, err := a.tokens.authenticate(ctx, token, fresh)
	switch {
	case err == nil:
		return Identity{Role: RoleTenant, Tenant: rec.Tenant, TokenID: rec.ID, Via: "token"}, nil
	case errors.Is(err, errNoSuchToken):
		return Identity{}, status.Error(codes.Unauthenticated, "invalid or revoked token")
	case ctx.Err() != nil:
		return Identity{}, status.FromContextError(ctx.Err()).Err()
	default:
		a.log.Error("token lookup failed", "err", err)
		return Identity{}, status.Error(codes.Unavailable, "cannot check the token now")
	}
}

// UnaryInterceptor authenticates and authorises a unary call before its handler runs.
func (a *Authenticator) UnaryInterceptor(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	c := classOf(info.FullMethod)
	id, err := a.identify(ctx, info.FullMethod)
	if err != nil {
		return nil, err
	}
	if err := authorizeCall(id, c, info.FullMethod); err != nil {
		return nil, err
	}
	if err := authorizeRequest(id, c, info.FullMethod, req); err != nil {
		return nil, err
	}
	return handler(withIdentity(ctx, id), req)
}

// withIdentity records id in ctx for the handlers: for FromContext, and for an admin, the mark by
// which controlplane/api names nodes and other tenants' resources in its refusals.
func withIdentity(ctx context.Context, id Identity) context.Context {
	if id.Role == RoleAdmin {
		ctx = api.WithAdmin(ctx)
	}
	return context.WithValue(ctx, identityKey{}, id)
}

// StreamInterceptor authenticates a streaming call before its handler runs, and authorises every
// message the handler receives (Sync sends one: the node it wants).
func (a *Authenticator) StreamInterceptor(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	c := classOf(info.FullMethod)
	id, err := a.identify(ss.Context(), info.FullMethod)
	if err != nil {
		return err
	}
	if err := authorizeCall(id, c, info.FullMethod); err != nil {
		return err
	}
	as := &authorizedStream{
		ServerStream: ss,
		ctx:          withIdentity(ss.Context(), id),
		id:           id, class: c, method: info.FullMethod,
	}
	if id.Via == "certificate" {
		if p, ok := peer.FromContext(ss.Context()); ok {
			if info, ok := p.AuthInfo.(credentials.TLSInfo); ok {
				as.refused = a.certRefused(info.State)
			}
		}
	}
	if as.refused == nil {
		return handler(srv, as)
	}
	// An idle stream sends and receives nothing for a long time: it is looked at every
	// revocationSweep too, and ended (its context cancelled) once its certificate is refused.
	ctx, cancel := context.WithCancel(as.ctx)
	defer cancel()
	as.ctx = ctx
	var swept atomic.Pointer[error]
	go func() {
		t := time.NewTicker(revocationSweep)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				if err := as.refused(); err != nil {
					swept.Store(&err)
					cancel()
					return
				}
			}
		}
	}()
	err = handler(srv, as)
	if why := swept.Load(); why != nil {
		return *why
	}
	return err
}

// revocationSweep is how often a stream of a certificate-authenticated caller is checked against the
// revocation list and the CAs, messages or not.
const revocationSweep = time.Second

type authorizedStream struct {
	grpc.ServerStream
	ctx    context.Context
	id     Identity
	class  class
	method string
	// refused, for a caller known by its certificate, tells whether that certificate is refused
	// now (certRefused): a stream that outlives its certificate ends at its next message.
	refused func() error
}

func (s *authorizedStream) SendMsg(m any) error {
	if s.refused != nil {
		if err := s.refused(); err != nil {
			return err
		}
	}
	return s.ServerStream.SendMsg(m)
}

func (s *authorizedStream) Context() context.Context { return s.ctx }

func (s *authorizedStream) RecvMsg(m any) error {
	if err := s.ServerStream.RecvMsg(m); err != nil {
		return err
	}
	if s.refused != nil {
		if err := s.refused(); err != nil {
			return err
		}
	}
	return authorizeRequest(s.id, s.class, s.method, m)
}
