package main

import (
	"crypto/x509"
	"fmt"
	"net"
	"path/filepath"
	"slices"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/vxfabric/vxfabric/security/pki"
)

func init() { register(newCertsCmd) }

// maxDays bounds --days: a century for the leaves, two for the CA.
const maxDays = 36500

func newCertsCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "certs", Short: "make the certificates that secure a fabric"}
	var (
		dir         string
		nodes       []string
		serverNames []string
		serverIPs   []string
		days        int
	)
	initCmd := &cobra.Command{
		Use:   "init",
		Short: "create a CA, a server certificate, one client certificate per node, an admin certificate and a gossip key",
		Long: `Creates in --dir whatever is missing or no longer valid, and keeps the rest (run it again with
one more --node to add a host):

  ca.crt, ca.key                the fabric's CA (ECDSA P-256)
  server.crt, server.key        for vxfab server: localhost, 127.0.0.1 and every --server-name/--server-ip
  node-NAME.crt, node-NAME.key  for vxfab agent --node NAME: identity vxfab://node/NAME (CN node:NAME)
  admin.crt, admin.key          for the CLI: identity vxfab://admin (CN admin)
  gossip.key                    for --gossip-keyring (or --gossip-key): 32 random bytes, base64
  crl.pem                       for --tls-crl: the CA's revocation list, empty to start with
  issued/                       a copy of every certificate issued (certs revoke NAME revokes them all)

Keys are written with mode 0600. Copy to each host only its own node certificate and key, ca.crt,
crl.pem and gossip.key; ca.key never needs to leave the machine that runs this command.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg := pki.DefaultInit(dir)
			cfg.Nodes = nodes
			cfg.ServerNames = serverNames
			for _, s := range serverIPs {
				ip := net.ParseIP(s)
				if ip == nil {
					return fmt.Errorf("--server-ip %q is not an IP address", s)
				}
				cfg.ServerIPs = append(cfg.ServerIPs, ip)
			}
			cfg.Validity = time.Duration(days) * 24 * time.Hour
			res, err := pki.Init(cfg)
			if err != nil {
				return err
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "FILE\tSTATE")
			for _, r := range res {
				state := "kept"
				if r.Created {
					state = "created"
				}
				fmt.Fprintf(tw, "%s\t%s\n", filepath.Base(r.Path), state)
			}
			return tw.Flush()
		},
	}
	fs := initCmd.Flags()
	fs.StringVar(&dir, "dir", "", "directory of the CA, certificates and keys (created 0700)")
	fs.StringArrayVar(&nodes, "node", nil, "node name to make a client certificate for (repeatable)")
	fs.StringArrayVar(&serverNames, "server-name", nil, "DNS name clients reach the server by (repeatable)")
	fs.StringArrayVar(&serverIPs, "server-ip", nil, "IP address clients reach the server at (repeatable)")
	days = 365
	newNumber(fs, &days, "days", 1, maxDays, fmt.Sprintf("a number of days, 1-%d", maxDays), "validity of the certificates in days (the CA gets twice as long)")
	_ = initCmd.MarkFlagRequired("dir")

	var revokeDir string
	revokeCmd := &cobra.Command{
		Use:   "revoke [NAME|FILE...]",
		Short: "put client certificates of the CA in --dir on its revocation list",
		Long: `Adds the certificates to the CA's revocation list, --dir/crl.pem (signed with ca.key). NAME is a
node (node-NAME.crt in --dir) or admin (admin.crt); a path to a .crt file names any certificate the CA
signed. A NAME revokes the certificate its file holds now and every unexpired one issued to it before
(certs init keeps a copy of each in --dir/issued/). With no name it writes the list anew (an empty
one, to start with).

The API server refuses a revoked certificate within about a second: in new connections (the TLS
handshake fails: the client sees Unavailable, "tls: bad certificate", and retrying with the same
certificate is no use), in calls over connections already open and on running streams at their
next message (Unauthenticated, "client certificate revoked"). A server that made its own PKI reads
<data-dir>/pki/crl.pem; any other reads the list given with --tls-crl (copy the file to every
server replica). Running certs init again issues the revoked node and admin certificates anew.
A revoked node still knows the gossip key: once every running server enforces the new list, one of
them replaces the key everywhere else (a rotation; server --gossip-revoke-rotation).`,
		Args: cobra.ArbitraryArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			var certs []*x509.Certificate
			var named []string // the argument that named each of certs
			for _, a := range args {
				name := ""
				switch {
				case a == "admin":
					name = pki.AdminCert
				case pki.ValidNodeName(a):
					name = pki.NodeCertFile(a)
				}
				if name == "" {
					c, err := pki.ReadCertFile(a)
					if err != nil {
						return fmt.Errorf("%s: %w", a, err)
					}
					certs, named = append(certs, c), append(named, a)
					continue
				}
				// A name: its certificate and every unexpired one issued to it before.
				of, err := pki.CertsOf(revokeDir, name, time.Now())
				if err != nil {
					return fmt.Errorf("%s: %w", a, err)
				}
				for _, c := range of {
					certs, named = append(certs, c), append(named, a)
				}
			}
			res, err := pki.Revoke(revokeDir, certs, time.Now())
			if err != nil {
				return err
			}
			if len(res) > 0 {
				tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "CERTIFICATE\tSERIAL\tEXPIRES\tSTATE")
				for i, r := range res {
					state := "revoked"
					if r.Already {
						state = "already revoked"
					}
					fmt.Fprintf(tw, "%s\t%x\t%s\t%s\n", named[i], r.Serial, certs[i].NotAfter.UTC().Format(time.DateOnly), state)
				}
				if err := tw.Flush(); err != nil {
					return err
				}
			}
			list := filepath.Join(revokeDir, pki.CRLFile)
			if !slices.ContainsFunc(res, func(r pki.RevokeResult) bool { return !r.Already }) {
				_, err = fmt.Fprintf(cmd.OutOrStdout(), "revocation list written anew, nothing newly revoked: %s\n", list)
				return err
			}
			node := false
			for i, r := range res {
				node = node || !r.Already && pki.IdentityOf(certs[i]).Kind == pki.KindNode
			}
			if !node {
				// The servers still rotate the gossip key for any list that revokes more (they see
				// serial numbers only): harmless, and nothing to wait for.
				_, err = fmt.Fprintf(cmd.OutOrStdout(), "revocation list: %s\n"+
					"servers refuse these certificates once their --tls-crl holds it (copy it to each replica)\n", list)
				return err
			}
			_, err = fmt.Fprintf(cmd.OutOrStdout(), "revocation list: %s\n"+
				"a revoked node still holds the gossip key: once every running server enforces this list (copy it to\n"+
				"each replica's --tls-crl), one of them rotates the key (vxfab gossip status shows it)\n", list)
			return err
		},
	}
	revokeCmd.Flags().StringVar(&revokeDir, "dir", "", "directory of the CA (ca.crt, ca.key) and its certificates")
	_ = revokeCmd.MarkFlagRequired("dir")
	cmd.AddCommand(initCmd, revokeCmd)
	return cmd
}
