package auth

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"net"

	"google.golang.org/grpc/credentials"
)

// tlsRecordHandshake is the first byte of every TLS connection (a handshake record); an HTTP/2
// client preface starts with 'P', so one byte tells the two apart.
const tlsRecordHandshake = 0x16

// serverCreds are the API server's transport credentials. TCP connections must speak TLS unless
// plaintext is allowed (--insecure). Unix socket connections may speak either: the socket's file
// permissions guard who can connect, and its peers still authenticate per call (token or, over TLS,
// a client certificate); the connection alone grants nothing.
type serverCreds struct {
	tls            credentials.TransportCredentials // nil: no server certificate configured
	plaintextOnTCP bool
}

func newServerCreds(cfg *tls.Config, plaintextOnTCP bool) *serverCreds {
	c := &serverCreds{plaintextOnTCP: plaintextOnTCP}
	if cfg != nil {
		c.tls = credentials.NewTLS(cfg)
	}
	return c
}

// plainInfo is the AuthInfo of a plaintext connection.
type plainInfo struct {
	credentials.CommonAuthInfo
	network string
}

func (p plainInfo) AuthType() string { return "plaintext-" + p.network }

// ServerHandshake sniffs one byte (under the deadline grpc.ConnectionTimeout set on rawConn) and
// runs TLS or accepts plaintext as the listener's network allows.
func (c *serverCreds) ServerHandshake(rawConn net.Conn) (net.Conn, credentials.AuthInfo, error) {
	network := rawConn.LocalAddr().Network()
	unix := network == "unix"
	plainOK := unix || c.plaintextOnTCP
	if !plainOK {
		// TLS only: hand the connection straight to TLS, no sniffing needed.
		if c.tls == nil {
			rawConn.Close()
			return nil, nil, errors.New("no server certificate configured")
		}
		return c.tls.ServerHandshake(rawConn)
	}
	br := bufio.NewReaderSize(rawConn, 1)
	first, err := br.Peek(1)
	if err != nil {
		rawConn.Close()
		return nil, nil, err
	}
	conn := &peekedConn{Conn: rawConn, r: br}
	if first[0] == tlsRecordHandshake && c.tls != nil {
		return c.tls.ServerHandshake(conn)
	}
	level := credentials.NoSecurity
	if unix {
		level = credentials.PrivacyAndIntegrity // a local socket cannot be observed from the network
	}
	return conn, plainInfo{CommonAuthInfo: credentials.CommonAuthInfo{SecurityLevel: level}, network: network}, nil
}

func (c *serverCreds) ClientHandshake(context.Context, string, net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return nil, nil, errors.New("server credentials cannot dial")
}

func (c *serverCreds) Info() credentials.ProtocolInfo {
	return credentials.ProtocolInfo{SecurityProtocol: "tls"}
}

func (c *serverCreds) Clone() credentials.TransportCredentials {
	cp := *c
	return &cp
}

func (c *serverCreds) OverrideServerName(string) error { return nil }

// peekedConn returns the sniffed byte before the rest of the connection.
type peekedConn struct {
	net.Conn
	r *bufio.Reader
}

func (p *peekedConn) Read(b []byte) (int, error) { return p.r.Read(b) }
