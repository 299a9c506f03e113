// Package store is the typed access to vxfabric's etcd keys: it reads and writes tenants, networks,
// ports, nodes and their allocation and index keys, each create or delete as ONE etcd transaction.
//
// It owns the key schema (/vxfabric/v1/...) and the mapping of etcd revisions into the resources'
// revision fields. It must never keep state of its own in memory: etcd is the only authority, and
// every conflict (two replicas taking the same VNI, IP, MAC or name) is settled by a transaction's
// compare, never by a lock here. It never picks VNIs or addresses (controlplane/alloc does) and never
// speaks gRPC codes (controlplane/api maps the sentinel errors below, in one place).
package store

import (
	"fmt"
	"net/netip"
)

// Prefix is the root of every vxfabric key.
const Prefix = "/vxfabric/v1/"

// Key prefixes of the schema. Values are proto.Marshal'ed vxfabricv1 messages unless said otherwise.
const (
	TenantsPrefix      = Prefix + "tenants/"        // <tenant> -> Tenant
	NetworksPrefix     = Prefix + "networks/"       // <network-id> -> Network (revision 0 in storage)
	NetworkNamesPrefix = Prefix + "names/networks/" // <tenant>/<name> -> raw network id
	PortsPrefix        = Prefix + "ports/"          // <port-id> -> Port (plugged false in storage)
	PortNamesPrefix    = Prefix + "names/ports/"    // <tenant>/<name> -> raw port id
	VNIPrefix          = Prefix + "alloc/vni/"      // <vni %08d> -> raw network id
	IPPrefix           = Prefix + "alloc/ip/"       // <network-id>/<ipv4> -> raw port id
	MACPrefix          = Prefix + "alloc/mac/"      // <network-id>/<mac> -> raw port id
	NodesPrefix        = Prefix + "nodes/"          // <node> -> Node
	// NodesEpochKey is rewritten, in the same transaction, by every write that adds a node record or
	// changes a node's VTEP (RegisterNode, the node status writer, PutNode): a create checked against
	// the node VTEPs compares this one key instead of every node record (NodesUnchangedSince).
	NodesEpochKey    = Prefix + NodesEpoch
	PortStatusPrefix = Prefix + "status/ports/" // <port-id> -> "1" while plugged
	// NodeReportsPrefix orders each node's reports (controlplane/fanout): <node> -> the sequence of
	// the newest report that wrote the node's port statuses, 20 decimal digits.
	NodeReportsPrefix = Prefix + NodeReports
	// RequestsPrefix holds the request records (TenantRequestKey, RequestKey): raw resource ids.
	RequestsPrefix = Prefix + "requests/"
	LeaderPrefix   = Prefix + "leader/" // election of the node-status writer
	// NodeCIDRPrefix indexes which nat and routed networks take part on which node, for the gateway
	// overlap check: <node>/<network-id>/<port-id> -> raw network CIDR, one key per port of a nat or
	// routed network, written and deleted with the port (so the node's last port of a network takes
	// the network's entry with it).
	NodeCIDRPrefix = Prefix + "index/node-cidr/"
	// UplinkPrefix indexes the uplinks of bridged networks: <node>/<interface> -> raw network id,
	// written and deleted with the network. An interface is the uplink of one network at most: the
	// agent moves it into that network's bridge, and a second network would take it from the first.
	UplinkPrefix = Prefix + "index/uplinks/"
	// TokensPrefix holds the tenants' API tokens: <token-id> -> JSON record, written by
	// controlplane/auth (tokens.go). The store reads a record's tenant only, to delete the tokens
	// with their tenant (DeleteTenant).
	TokensPrefix = Prefix + "tokens/"
	// GossipKeyringKey holds the fabric's gossip keyring (vxfabricv1.GossipKeyring), written by
	// controlplane/gossipkeys from the first rotation on; absent before it.
	GossipKeyringKey = Prefix + GossipKeyring
	// GossipRevocationKey names the client certificate revocation list for which the last rotation
	// was started, "NUMBER ISSUER REVOKED" (its CRL number, decimal; its CA's key identifier, hex;
	// how many certificates it revokes), written by controlplane/gossipkeys as it starts that
	// rotation; absent before the first such rotation.
	GossipRevocationKey = Prefix + GossipRevocation
	// ServerRevocationsPrefix records the revocation list each running server enforces: <gossip
	// name> -> "NUMBER ISSUER REVOKED", on the server's lease (controlplane/gossipkeys).
	ServerRevocationsPrefix = Prefix + ServerRevocations
	// NodeKeyringPrefix records which keyring each node's agent confirmed: <node> -> the keyring's
	// revision, 20 decimal digits (written by controlplane/fanout from ReportApplied).
	NodeKeyringPrefix = Prefix + NodeKeyrings
	// NodeUnderlayPrefix records what each node's host reaches outside the fabric, as its agent
	// last reported it (ReportAppliedRequest.underlay_routes): <node> -> the sequence of the report
	// that wrote it, then the prefixes, one per line (UnderlayValue), written by controlplane/fanout
	// when they change, read by the gateway guard of a port bound to the node.
	NodeUnderlayPrefix = Prefix + NodeUnderlays
	// ServerKeyringPrefix records which keyring each running server installed: <gossip name> -> the
	// keyring's revision, 20 decimal digits, on the server's lease (controlplane/gossipkeys).
	ServerKeyringPrefix = Prefix + ServerKeyrings
)

// GossipKeyring, GossipRevocation, NodeKeyrings, ServerKeyrings, ServerRevocations and NodeReports
// are GossipKeyringKey, GossipRevocationKey, NodeKeyringPrefix, ServerKeyringPrefix,
// ServerRevocationsPrefix and NodeReportsPrefix relative to the prefix.
const (
	GossipKeyring     = "gossip/keyring"
	GossipRevocation  = "gossip/revocation-list"
	ServerRevocations = "status/revocation-lists/"
	NodeKeyrings      = "status/keyring/"
	ServerKeyrings    = "status/keyring-servers/"
	NodeReports       = "status/reports/"
	NodeUnderlays     = "status/underlay/"
)

// OrderedValue encodes n (>= 0) as the value of a key that etcd compares as a string (the report
// sequences and confirmed keyrings under NodeReportsPrefix, NodeKeyringPrefix and
// ServerKeyringPrefix, and the first line of NodeUnderlayPrefix values): 20 decimal digits, so that
// the order of strings is the order of numbers.
func OrderedValue(n int64) string { return fmt.Sprintf("%020d", n) }

// NodesEpoch is NodesEpochKey relative to the fabric's prefix.
const NodesEpoch = "nodes-epoch"

// Request kinds of RequestKey.
const (
	KindTenant  = "tenant"
	KindNetwork = "network"
	KindPort    = "port"
)

// TenantKey is the key of a tenant.
func TenantKey(name string) string { return TenantsPrefix + name }

// NetworkKey is the key of a network.
func NetworkKey(id string) string { return NetworksPrefix + id }

// NetworkNameKey is the uniqueness index of a network name within its tenant.
func NetworkNameKey(tenant, name string) string { return NetworkNamesPrefix + tenant + "/" + name }

// TenantNetworkNamesPrefix holds the name index of every network of a tenant.
func TenantNetworkNamesPrefix(tenant string) string { return NetworkNamesPrefix + tenant + "/" }

// PortKey is the key of a port.
func PortKey(id string) string { return PortsPrefix + id }

// PortNameKey is the uniqueness index of a port name within its tenant.
func PortNameKey(tenant, name string) string { return PortNamesPrefix + tenant + "/" + name }

// VNIKey is the allocation key of a VNI. The zero padding keeps keys in numeric order, so that a
// range of VNIs is a range of keys.
func VNIKey(vni uint32) string { return fmt.Sprintf("%s%08d", VNIPrefix, vni) }

// NetworkIPPrefix holds the address allocations of one network: one key per port.
func NetworkIPPrefix(networkID string) string { return IPPrefix + networkID + "/" }

// IPKey is the allocation key of an address in a network.
func IPKey(networkID string, ip netip.Addr) string { return NetworkIPPrefix(networkID) + ip.String() }

// NetworkMACPrefix holds the MAC allocations of one network.
func NetworkMACPrefix(networkID string) string { return MACPrefix + networkID + "/" }

// MACKey is the allocation key of a MAC (lowercase, colon separated) in a network.
func MACKey(networkID, mac string) string { return NetworkMACPrefix(networkID) + mac }

// UplinkKey is the uniqueness index of a bridged network's uplink.
func UplinkKey(node, iface string) string { return UplinkPrefix + node + "/" + iface }

// NodeKey is the key of a node.
func NodeKey(name string) string { return NodesPrefix + name }

// PortStatusKey exists (value "1") while the port's agent reports it plugged.
func PortStatusKey(portID string) string { return PortStatusPrefix + portID }

// TenantRequestKey records which tenant a tenant create with this request id made. Tenants are
// created by the admin only, so these records have the admin's one scope: tenant/<request-id>.
func TenantRequestKey(requestID string) string { return RequestsPrefix + KindTenant + "/" + requestID }

// RequestKey records which resource of tenant a create with this request id made:
// <kind>/<tenant>/<request-id>. Each tenant has its own request ids: a record of one tenant neither
// blocks another tenant's create with the same id nor tells it that the id was used.
func RequestKey(kind, tenant, requestID string) string {
	return TenantRequestsPrefix(kind, tenant) + requestID
}

// TenantRequestsPrefix holds the request records of one kind of one tenant.
func TenantRequestsPrefix(kind, tenant string) string {
	return RequestsPrefix + kind + "/" + tenant + "/"
}

// NodeNetworkCIDRPrefix holds the node-cidr index keys of one network's ports on one node: it is
// non-empty exactly while the node takes part in that (nat or routed) network through a port.
func NodeNetworkCIDRPrefix(node, networkID string) string {
	return NodeCIDRPrefix + node + "/" + networkID + "/"
}

// NodeCIDRKey is the node-cidr index key of a port of a nat or routed network.
func NodeCIDRKey(node, networkID, portID string) string {
	return NodeNetworkCIDRPrefix(node, networkID) + portID
}
