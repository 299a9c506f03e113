package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/spf13/pflag"
	"github.com/vxfabric/vxfabric/controlplane/client"
	"github.com/vxfabric/vxfabric/controlplane/server"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
)

const defaultServer = "127.0.0.1:7400"

// defaultProfilePath is where `vxfab lab up` records how the CLI reaches the lab's server.
const defaultProfilePath = client.DefaultProfilePath

// clientFlags are the options every API command shares. Flags win over VXFAB_* environment
// variables, which win over the profile file.
type clientFlags struct {
	server   string
	output   string
	token    string
	tlsCA    string
	tlsCert  string
	tlsKey   string
	insecure bool
	profile  string
	timeout  time.Duration
}

var cliOpts clientFlags

func addClientFlags(fs *pflag.FlagSet) {
	fs.StringVar(&cliOpts.server, "server", "", "API server address, host:port or unix:///path (env VXFAB_SERVER; default "+defaultServer+", or the running lab's)")
	cliOpts.output = "table"
	fs.VarP((*outputFormat)(&cliOpts.output), "output", "o", "output format: table or json")
	fs.StringVar(&cliOpts.token, "token", "", "API bearer token (env VXFAB_TOKEN)")
	fs.StringVar(&cliOpts.tlsCA, "tls-ca", "", "CA certificates that sign the server's certificate (env VXFAB_TLS_CA)")
	fs.StringVar(&cliOpts.tlsCert, "tls-cert", "", "client certificate (env VXFAB_TLS_CERT)")
	fs.StringVar(&cliOpts.tlsKey, "tls-key", "", "client key (env VXFAB_TLS_KEY)")
	fs.BoolVar(&cliOpts.insecure, "insecure", false, "connect without TLS")
	fs.StringVar(&cliOpts.profile, "profile", "", "client profile file, as written by vxfab lab up (env VXFAB_PROFILE; default "+defaultProfilePath+" when present)")
	cliOpts.timeout = 15 * time.Second
	fs.Var((*positiveDuration)(&cliOpts.timeout), "timeout", "deadline of one API call")
}

// outputFormat is the --output flag: table or json, refused otherwise when parsed, so that every
// command (the lab's too) refuses it alike.
type outputFormat string

func (o *outputFormat) Set(s string) error {
	if s != "table" && s != "json" {
		return fmt.Errorf("want table or json")
	}
	*o = outputFormat(s)
	return nil
}

func (o *outputFormat) String() string { return string(*o) }
func (o *outputFormat) Type() string   { return "format" }

// resolvedClient is the outcome of flags, environment and profile.
type resolvedClient struct {
	server   string
	token    string
	tlsCA    string
	tlsCert  string
	tlsKey   string
	insecure bool
}

func firstNonEmpty(values ...string) string {
	for _, v := range values {
		if v != "" {
			return v
		}
	}
	return ""
}

func resolveClient() (resolvedClient, error) {
	var prof client.Profile
	profPath := firstNonEmpty(cliOpts.profile, os.Getenv("VXFAB_PROFILE"))
	explicitProfile := profPath != ""
	if !explicitProfile {
		profPath = defaultProfilePath
	}
	useProfile := cliOpts.server == "" && os.Getenv("VXFAB_SERVER") == "" || explicitProfile
	if useProfile {
		p, err := client.ReadProfile(profPath)
		switch {
		case err == nil:
			prof = p
		case explicitProfile || !errors.Is(err, os.ErrNotExist):
			return resolvedClient{}, fmt.Errorf("read profile: %w", err)
		}
	}
	r := resolvedClient{
		server:   firstNonEmpty(cliOpts.server, os.Getenv("VXFAB_SERVER"), prof.Server, defaultServer),
		token:    firstNonEmpty(cliOpts.token, os.Getenv("VXFAB_TOKEN")),
		tlsCA:    firstNonEmpty(cliOpts.tlsCA, os.Getenv("VXFAB_TLS_CA"), prof.TLSCA),
		tlsCert:  firstNonEmpty(cliOpts.tlsCert, os.Getenv("VXFAB_TLS_CERT"), prof.TLSCert),
		tlsKey:   firstNonEmpty(cliOpts.tlsKey, os.Getenv("VXFAB_TLS_KEY"), prof.TLSKey),
		insecure: cliOpts.insecure || prof.Insecure,
	}
	// A certificate and its key come as a pair: half of one is refused before either is read.
	profName := "the profile " + profPath + "'s "
	if err := certKeyPair(
		firstSource(source{cliOpts.tlsCert, "--tls-cert"}, source{os.Getenv("VXFAB_TLS_CERT"), "VXFAB_TLS_CERT"}, source{prof.TLSCert, profName + "tls_cert"}),
		firstSource(source{cliOpts.tlsKey, "--tls-key"}, source{os.Getenv("VXFAB_TLS_KEY"), "VXFAB_TLS_KEY"}, source{prof.TLSKey, profName + "tls_key"}),
	); err != nil {
		return resolvedClient{}, err
	}
	if r.token == "" && prof.TokenFile != "" {
		data, err := os.ReadFile(prof.TokenFile)
		if err != nil {
			return resolvedClient{}, fmt.Errorf("read token: %w", err)
		}
		r.token = strings.TrimSpace(string(data))
	}
	// A server started on this machine with its defaults keeps its CA and admin token in its data
	// directory: use them when nothing else was said, so the quick start needs no flags.
	local := server.DefaultDataDir()
	if r.tlsCA == "" && !r.insecure && !strings.HasPrefix(r.server, "unix:") {
		if ca := filepath.Join(local, "pki", "ca.crt"); readable(ca) {
			r.tlsCA = ca
		}
	}
	// The local admin token goes only to a server on this machine (loopback or unix socket): never
	// over a network, where plaintext would expose it.
	if r.token == "" && isLocalServer(r.server) {
		if data, err := os.ReadFile(filepath.Join(local, "admin.token")); err == nil {
			r.token = strings.TrimSpace(string(data))
		}
	}
	if r.tlsCA == "" && !strings.HasPrefix(r.server, "unix:") {
		// Without a CA to verify the server there is no TLS to speak: plaintext (--insecure servers).
		r.insecure = true
	}
	return r, nil
}

// source is a setting and the name it was given by (a flag, a variable, a profile's field).
type source struct{ value, name string }

// firstSource is the first of sources that has a value, or none.
func firstSource(sources ...source) source {
	for _, s := range sources {
		if s.value != "" {
			return s
		}
	}
	return source{}
}

// certKeyPair refuses a client certificate without its key, or a key without its certificate, so
// that neither is read (loading the pair would fail with "open : no such file or directory").
func certKeyPair(cert, key source) error {
	switch {
	case cert.value != "" && key.value == "":
		return fmt.Errorf("--tls-cert and --tls-key go together: a certificate is given (%s) without its key", cert.name)
	case key.value != "" && cert.value == "":
		return fmt.Errorf("--tls-cert and --tls-key go together: a key is given (%s) without its certificate", key.name)
	}
	return nil
}

// tokenCreds attaches the bearer token to every call.
type tokenCreds struct {
	token  string
	secure bool
}

func (t tokenCreds) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + t.token}, nil
}

func (t tokenCreds) RequireTransportSecurity() bool { return t.secure }

// dialServer opens a client connection to the API server as the flags, environment and profile say.
func dialServer() (*grpc.ClientConn, error) {
	r, err := resolveClient()
	if err != nil {
		return nil, err
	}
	opts := []grpc.DialOption{client.CallOptions()}
	secure := r.tlsCA != "" && !r.insecure
	if secure {
		pem, err := os.ReadFile(r.tlsCA)
		if err != nil {
			return nil, fmt.Errorf("read CA: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("CA file %s holds no certificate", r.tlsCA)
		}
		cfg := &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
		if r.tlsCert != "" {
			cert, err := tls.LoadX509KeyPair(r.tlsCert, r.tlsKey)
			if err != nil {
				return nil, fmt.Errorf("load client certificate: %w", err)
			}
			cfg.Certificates = []tls.Certificate{cert}
		}
		opts = append(opts, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
	} else {
		opts = append(opts, grpc.WithTransportCredentials(insecure.NewCredentials()))
	}
	if r.token != "" {
		opts = append(opts, grpc.WithPerRPCCredentials(tokenCreds{token: r.token, secure: secure}))
	}
	conn, err := grpc.NewClient(r.server, opts...)
	if err != nil {
		return nil, fmt.Errorf("connect to %s: %w", r.server, err)
	}
	return conn, nil
}

// callContext bounds one API call by --timeout.
func callContext(parent context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(parent, cliOpts.timeout)
}

// isLocalServer tells whether addr is a unix socket or a loopback address.
func isLocalServer(addr string) bool {
	if strings.HasPrefix(addr, "unix:") {
		return true
	}
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip, err := netip.ParseAddr(host)
	return err == nil && ip.IsLoopback()
}

func readable(path string) bool {
	f, err := os.Open(path)
	if err != nil {
		return false
	}
	f.Close()
	return true
}

// grpcErrorPrefix is how a gRPC status error starts its text; errorLine prints the code once, in front.
var grpcErrorPrefix = regexp.MustCompile(`rpc error: code = [A-Za-z]+ desc = `)

// errorLine renders an error as one readable line: a gRPC status as "Code: message". An error that
// wraps a status (`vm "v2": create port: <status>`) keeps its context and shows the status's code
// once, in front, and its message without grpc's "rpc error: code = ... desc =" text.
func errorLine(err error) string {
	if st, ok := status.FromError(err); ok {
		msg := singleLine(grpcErrorPrefix.ReplaceAllString(st.Message(), ""))
		// A unix socket speaks plaintext: there, a reset or a broken pipe is a server going away.
		tcp := !strings.Contains(msg, "unix ")
		switch {
		case st.Code() == codes.Unavailable && (strings.Contains(msg, "bad certificate") || strings.Contains(msg, "unknown certificate authority")):
			msg += " (the server refused the client certificate: not signed by its CA, or revoked?)"
		case st.Code() == codes.Unavailable && tcp && strings.Contains(msg, "error reading server preface"):
			msg += " (unless the server just went away: it speaks TLS, give --tls-ca, or use its unix socket)"
		case st.Code() == codes.Unavailable && tcp && strings.Contains(msg, "broken pipe"):
			msg += " (unless the server just went away: it refused the TLS handshake, is the client certificate signed by its CA?)"
		case st.Code() == codes.Unavailable && strings.Contains(msg, "certificate signed by unknown authority"):
			msg += " (the server's certificate is not signed by --tls-ca)"
		case st.Code() == codes.Unavailable && strings.Contains(msg, "Error while dialing") &&
			(strings.Contains(msg, "connection refused") || strings.Contains(msg, "no such file or directory")):
			// This client's own dial (a server's etcd errors come back Unavailable too, without it).
			msg += " (is a server running there? start a lab with `vxfab lab up`, a lab's stopped server with `vxfab lab server start`, or point --server at yours)"
		case st.Code() == codes.Unimplemented && strings.Contains(msg, "vxfabric.v1.GossipService"):
			msg += " (this server runs without gossip: it serves GossipService when started with --gossip-bind or --join)"
		}
		return st.Code().String() + ": " + msg
	}
	return singleLine(grpcErrorPrefix.ReplaceAllString(err.Error(), ""))
}

// singleLine keeps a message on one terminal line: line breaks and other control characters (which
// could also rewrite the terminal) become spaces.
func singleLine(s string) string {
	return strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return ' '
		}
		return r
	}, s)
}
