// Package tests is vxfabric's end-to-end suite: it brings up a real lab (`vxfab lab up`, with the
// real server and agents as processes in network namespaces), drives it through the vxfab binary
// and the lab package, and checks every scenario with real traffic between namespaces.
//
// The tests are privileged (root, network namespaces) and skip otherwise; they need the binary
// named by VXFAB_BIN (the Makefile sets it to bin/vxfab). They share one lab, named "e2e" with
// namespaces vxt-e2e-*, which is removed at the end even on failure (and at the start, should a
// crashed run have left one). Every test removes the tenants, networks and VMs it created and
// restores any agent, server or host it took down. Nothing outside the lab's namespaces is touched.
package tests
