package lab

import (
	"fmt"
	"net"
	"path/filepath"

	"github.com/vxfabric/vxfabric/security/pki"
)

// pkiPath names a file of the lab's PKI (SecurityDir).
func (l *Lab) pkiPath(name string) string { return filepath.Join(l.SecurityDir(), name) }

// PKIFile is the path of a file of the lab's PKI, named as package pki names them (pki.CACertFile,
// pki.NodeCertFile("h1"), ...).
func (l *Lab) PKIFile(name string) string { return l.pkiPath(name) }

// ensurePKI makes whatever of the lab's PKI is missing, as `vxfab certs init` does: a CA, the
// server's certificate (for 198.18.0.2 and localhost), one client certificate per host, the admin
// certificate and the gossip key. Existing files are kept, so hosts added later get theirs.
func (l *Lab) ensurePKI() error {
	cfg := pki.DefaultInit(l.SecurityDir())
	cfg.Nodes = l.Hosts()
	cfg.ServerIPs = []net.IP{net.IP(ControlAddr.AsSlice())}
	cfg.Logger = l.log
	if _, err := pki.Init(cfg); err != nil {
		return fmt.Errorf("lab %q: pki: %w", l.cfg.Name, err)
	}
	// Init also wrote an empty revocation list: the server and the agents are given it, so that
	// `vxfab certs revoke --dir` on the lab's PKI takes effect within a second.
	return nil
}
