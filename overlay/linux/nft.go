//go:build linux

package linux

import (
	"cmp"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"golang.org/x/sys/unix"

	"github.com/vxfabric/vxfabric/overlay"
)

// Rules are compared by the canonical text of overlay.Rule, stored as the rule's comment (UserData):
// a rule whose comment matches is kept as it is, so a restarted process re-creates nothing. Missing
// rules are inserted at their place relative to the kept ones, stale rules are deleted afterwards by
// handle; our tables are never flushed and never re-created while they exist.

var families = []struct {
	name string
	fam  nftables.TableFamily
}{{"inet", nftables.TableFamilyINet}, {"bridge", nftables.TableFamilyBridge}, {"netdev", nftables.TableFamilyNetdev}}

// setElem is a set element to add or delete, with the object name its change reports.
type setElem struct {
	elem   nftables.SetElement
	object string
}

type staleRule struct {
	chain  *nftables.Chain
	handle uint64
	text   string
}

// nftRun is what the addition pass read and left for the deletion pass.
type nftRun struct {
	plan           []overlay.NftChain
	tables         map[string]*nftables.Table // family -> our table, if it exists
	forwardingMark bool
	staleRules     []staleRule
	staleElems     map[*nftables.Set][]setElem
	staleChains    []*nftables.Chain // base chains first: they may jump to the regular ones
	staleSets      []*nftables.Set
}

func familyOf(name string) nftables.TableFamily {
	for _, f := range families {
		if f.name == name {
			return f.fam
		}
	}
	return nftables.TableFamilyINet
}

var hooks = map[string]*nftables.ChainHook{
	"prerouting":  nftables.ChainHookPrerouting,
	"input":       nftables.ChainHookInput,
	"forward":     nftables.ChainHookForward,
	"postrouting": nftables.ChainHookPostrouting,
	"ingress":     nftables.ChainHookIngress,
}

func (r *run) nftAdd() {
	c := r.d.nft
	held := func(n overlay.Network) bool { return r.refused[n.VNI] == nil && r.links[n.Uplink] != nil }
	r.nft.plan = overlay.PortChains(overlay.NftPlan(r.desired.WithoutUplinks(held)), func(iface string) bool { return r.links[iface] != nil })
	r.nft.tables = make(map[string]*nftables.Table)
	r.nft.staleElems = make(map[*nftables.Set][]setElem)
	haveChains := make(map[string]*nftables.Chain) // "family name"
	for _, f := range families {
		tables, err := c.ListTablesOfFamily(f.fam)
		if err != nil {
			r.fail(overlay.TableObject(f.name), fmt.Errorf("list tables: %w", err))
			return
		}
		for _, t := range tables {
			if t.Name == overlay.TableName {
				r.nft.tables[f.name] = t
			}
		}
		if r.nft.tables[f.name] == nil {
			continue
		}
		chains, err := c.ListChainsOfTableFamily(f.fam)
		if err != nil {
			r.fail(overlay.TableObject(f.name), fmt.Errorf("list chains: %w", err))
			return
		}
		for _, ch := range chains {
			if ch.Table.Name == overlay.TableName {
				haveChains[f.name+" "+ch.Name] = ch
			}
		}
	}
	r.nft.forwardingMark = haveChains["inet "+overlay.ForwardingMarkChain] != nil
	if len(r.nft.plan) == 0 {
		return
	}
	r.nft.staleChains = staleChains(r.nft.plan, haveChains)
	r.unpluggedPortChains(haveChains)

	// Tables that are missing, then chains, then sets.
	queued := false
	for _, f := range families {
		if r.nft.tables[f.name] == nil {
			r.nft.tables[f.name] = c.AddTable(&nftables.Table{Name: overlay.TableName, Family: f.fam})
			r.change(overlay.OpAdd, overlay.TableObject(f.name))
			queued = true
		}
	}
	if queued {
		if err := c.Flush(); err != nil {
			r.fail(overlay.TableObject("inet"), fmt.Errorf("create tables: %w", err))
			return
		}
		queued = false
	}
	chains := r.nftChains(haveChains)
	inet := r.nft.tables["inet"]
	sets := make(map[string]*nftables.Set)
	existing, err := c.GetSets(inet)
	if err != nil && !isNotFound(err) {
		r.fail(overlay.TableObject("inet"), fmt.Errorf("list sets: %w", err))
		return
	}
	for _, s := range existing {
		if !slices.Contains(overlay.NftSetNames, s.Name) {
			s.Table = inet
			r.nft.staleSets = append(r.nft.staleSets, s)
			continue
		}
		sets[s.Name] = s
	}
	for _, name := range overlay.NftSetNames {
		if sets[name] != nil {
			sets[name].Table = inet
			continue
		}
		typ := nftables.TypeIPAddr
		if overlay.NftSetIs6(name) {
			typ = nftables.TypeIP6Addr
		}
		s := &nftables.Set{Table: inet, Name: name, KeyType: typ}
		if err := c.AddSet(s, nil); err != nil {
			r.fail(overlay.TableObject("inet"), fmt.Errorf("add set %s: %w", name, err))
			return
		}
		sets[name] = s
		queued = true
	}
	if queued {
		if err := c.Flush(); err != nil {
			r.fail(overlay.TableObject("inet"), fmt.Errorf("create sets: %w", err))
			return
		}
	}

	// Set elements: add the missing VTEPs now, remove the stale ones in the deletion pass.
	wantSets := overlay.NftSets(r.desired)
	for _, name := range overlay.NftSetNames {
		want := wantSets[name]
		s := sets[name]
		elems, err := c.GetSetElements(s)
		if err != nil {
			r.fail(overlay.TableObject("inet"), fmt.Errorf("list set %s: %w", name, err))
			continue
		}
		have := make(map[netip.Addr]nftables.SetElement, len(elems))
		for _, e := range elems {
			if a, ok := netip.AddrFromSlice(e.Key); ok {
				have[a] = e
			}
		}
		wantSet := make(map[netip.Addr]bool, len(want))
		var add []setElem
		for _, a := range want {
			wantSet[a] = true
			if _, ok := have[a]; !ok {
				add = append(add, setElem{nftables.SetElement{Key: a.AsSlice()}, overlay.SetElemObject(name, a)})
			}
		}
		for a, e := range have {
			if !wantSet[a] {
				r.nft.staleElems[s] = append(r.nft.staleElems[s], setElem{e, overlay.SetElemObject(name, a)})
			}
		}
		if err := r.setElements(s, add, overlay.OpAdd); err != nil {
			r.fail(overlay.TableObject("inet"), fmt.Errorf("add elements of %s: %w", name, err))
		}
	}

	portSets := r.nftPortSets()

	// Rules, one transaction per chain so that one bad chain does not hold back the others.
	dropChainOK := false
	for _, pc := range r.nft.plan {
		ch := chains[pc.Family+" "+pc.Name]
		switch {
		case ch == nil:
			// Not made (reported): the rules that would go in it wait for an Apply that makes it.
		case pc.Family == "inet":
			r.syncChainAdd(pc, ch, sets)
		case pc.Family == "netdev" && pc.Name == overlay.PortDropChain:
			if portSets[overlay.PortDropSet] == nil {
				// No set to count in: the chain drops without counting rather than not at all.
				pc.Rules = slices.DeleteFunc(slices.Clone(pc.Rules), func(rule overlay.Rule) bool { return rule.Tally != "" })
			}
			dropChainOK = r.syncChainAdd(pc, ch, portSets)
		case pc.Family == "netdev" && !dropChainOK:
			// Its rules jump to the drop chain: without it in place, a port's chain keeps the rules
			// it has until an Apply gets them right.
		default:
			r.syncChainAdd(pc, ch, portSets)
		}
	}
}

// testHookChainBatch, when a test sets it, runs just before a batch of new chains goes to the kernel.
var testHookChainBatch func()

// nftChains returns our chains of the plan by "family name", adopting those that exist (have) and
// making the missing ones in batches of ruleChunk (the kernel acknowledges each). A batch the kernel
// refuses is made again chain by chain, so that one chain it refuses (before Linux 6.16, that of a
// port whose interface went away since the links were read) holds back no other; a chain that
// cannot be made is reported and left out.
func (r *run) nftChains(have map[string]*nftables.Chain) map[string]*nftables.Chain {
	c := r.d.nft
	accept := nftables.ChainPolicyAccept
	chains := make(map[string]*nftables.Chain)
	var batch []overlay.NftChain
	build := func(pc overlay.NftChain) *nftables.Chain {
		nc := &nftables.Chain{Name: pc.Name, Table: r.nft.tables[pc.Family]}
		if pc.Hook != "" {
			nc.Type, nc.Hooknum, nc.Policy = nftables.ChainType(pc.Type), hooks[pc.Hook], &accept
			nc.Priority = nftables.ChainPriorityRef(nftables.ChainPriority(pc.Priority))
			nc.Device = pc.Device
		}
		return nc
	}
	flush := func() {
		if len(batch) == 0 {
			return
		}
		if testHookChainBatch != nil {
			testHookChainBatch()
		}
		batchErr := c.Flush()
		for _, pc := range batch {
			key, object := pc.Family+" "+pc.Name, overlay.ChainObject(pc.Family, pc.Name)
			err := batchErr
			if err != nil && len(batch) > 1 {
				// The kernel refused the batch whole: alone, this chain may pass.
				chains[key] = c.AddChain(build(pc))
				err = c.Flush()
			}
			if err != nil {
				r.fail(object, fmt.Errorf("create: %w", err))
				delete(chains, key)
				continue
			}
			r.change(overlay.OpAdd, object)
		}
		batch = batch[:0]
	}
	for _, pc := range r.nft.plan {
		key := pc.Family + " " + pc.Name
		if ch := have[key]; ch != nil {
			switch {
			case pc.Hook == "" && ch.Hooknum != nil:
				r.fail(overlay.ChainObject(pc.Family, pc.Name), errors.New("exists as a base chain, want a regular one"))
			case pc.Hook != "" && (ch.Hooknum == nil || *ch.Hooknum != *hooks[pc.Hook] || ch.Type != nftables.ChainType(pc.Type) ||
				ch.Priority == nil || int(*ch.Priority) != pc.Priority):
				r.fail(overlay.ChainObject(pc.Family, pc.Name), errors.New("exists with another hook, type or priority"))
			}
			ch.Table = r.nft.tables[pc.Family]
			chains[key] = ch
			continue
		}
		chains[key] = c.AddChain(build(pc))
		if batch = append(batch, pc); len(batch) == ruleChunk {
			flush()
		}
	}
	flush()
	return chains
}

// unpluggedPortChains deletes the ingress chain of each port that this Apply is to plug (its
// interface is not on the port's bridge yet), so that it is made anew on the interface there is now:
// before Linux 6.16 a netdev hook follows its device, not the name, and a chain adopted by name
// could be checking a renamed interface while a new one of the port's name went unchecked. It
// removes the chains it deletes from have.
func (r *run) unpluggedPortChains(have map[string]*nftables.Chain) {
	vniOf := r.desired.PortVNIs()
	for _, pc := range r.nft.plan {
		key := pc.Family + " " + pc.Name
		ch := have[key]
		if pc.Device == "" || ch == nil {
			continue
		}
		l, br := r.links[pc.Device], r.links[overlay.BridgeName(vniOf[pc.Device])]
		if l != nil && br != nil && l.Attrs().MasterIndex == br.Attrs().Index {
			continue
		}
		ch.Table = r.nft.tables[pc.Family]
		if r.nftDeleteOne(overlay.ChainObject(pc.Family, pc.Name), func() { r.d.nft.DelChain(ch) }) {
			delete(have, key)
		}
	}
}

// staleChains returns the chains of ours (have, by "family name") that plan lacks, base chains
// first; the chain recording who turned forwarding on is not stale.
func staleChains(plan []overlay.NftChain, have map[string]*nftables.Chain) []*nftables.Chain {
	want := make(map[string]bool, len(plan))
	for _, pc := range plan {
		want[pc.Family+" "+pc.Name] = true
	}
	var stale []*nftables.Chain
	for key, ch := range have {
		if !want[key] && key != "inet "+overlay.ForwardingMarkChain {
			stale = append(stale, ch)
		}
	}
	slices.SortFunc(stale, func(a, b *nftables.Chain) int {
		return cmp.Or(cmp.Compare(btoi(a.Hooknum == nil), btoi(b.Hooknum == nil)),
			strings.Compare(tableFamilyName(a.Table), tableFamilyName(b.Table)), strings.Compare(a.Name, b.Name))
	})
	return stale
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

// nftPortSets reads the sets of our bridge and netdev tables: the bridge table holds none (those of
// earlier versions are stale), the netdev table the port drop counts while ports are secured. It
// returns the usable ones by name.
func (r *run) nftPortSets() map[string]*nftables.Set {
	c := r.d.nft
	want := slices.ContainsFunc(r.nft.plan, func(pc overlay.NftChain) bool { return pc.Name == overlay.PortDropChain })
	var drops *nftables.Set
	for _, fam := range []string{"bridge", "netdev"} {
		t := r.nft.tables[fam]
		existing, err := c.GetSets(t)
		if err != nil && !isNotFound(err) {
			r.fail(overlay.TableObject(fam), fmt.Errorf("list sets: %w", err))
			continue
		}
		for _, s := range existing {
			s.Table = t
			if fam == "netdev" && s.Name == overlay.PortDropSet && want {
				drops = s
				continue
			}
			r.nft.staleSets = append(r.nft.staleSets, s)
		}
	}
	if !want {
		return nil
	}
	// Port security does not depend on the counts: without them, its drop chain drops without
	// counting.
	drops, err := r.nftPortDropSet(drops, overlay.PortIfaces(r.nft.plan))
	if err != nil {
		r.fail(overlay.PortDropElemObject("*"), err)
	}
	if drops == nil {
		return nil
	}
	return map[string]*nftables.Set{drops.Name: drops}
}

// nftPortDropSet creates the port_drops set when missing (have nil) and queues for the deletion
// pass the elements of interfaces that are no longer secured ports (ifaces); the kernel keeps the
// others.
func (r *run) nftPortDropSet(have *nftables.Set, ifaces []string) (*nftables.Set, error) {
	c := r.d.nft
	if have != nil {
		if have.KeyType.Name != nftables.TypeIFName.Name || !have.Dynamic {
			return nil, fmt.Errorf("set %s exists with key type %q, dynamic %v; want %q, dynamic (delete it and Apply again)",
				have.Name, have.KeyType.Name, have.Dynamic, nftables.TypeIFName.Name)
		}
	} else {
		// Filled by the rules (an update adds a missing element), each element with a counter. The
		// size is nft's default for a dynamic set, far above a host's ports. nft stores interface
		// names in host byte order; without it, it would print them reversed.
		have = &nftables.Set{Table: r.nft.tables["netdev"], Name: overlay.PortDropSet, KeyType: nftables.TypeIFName,
			KeyByteOrder: binaryutil.NativeEndian, Dynamic: true, Counter: true, Size: 65535}
		if err := c.AddSet(have, nil); err != nil {
			return nil, fmt.Errorf("add set %s: %w", have.Name, err)
		}
		if err := c.Flush(); err != nil {
			return nil, fmt.Errorf("create set %s: %w", have.Name, err)
		}
	}
	elems, err := c.GetSetElements(have)
	if err != nil {
		return have, fmt.Errorf("list set %s: %w", have.Name, err)
	}
	for _, e := range elems {
		if iface := ifnameText(e.Key); !slices.Contains(ifaces, iface) {
			e.Counter = nil
			r.nft.staleElems[have] = append(r.nft.staleElems[have], setElem{e, overlay.PortDropElemObject(iface)})
		}
	}
	return have, nil
}

// ifnameText reads an interface name key (padded to IFNAMSIZ with zeros) back.
func ifnameText(key []byte) string {
	return strings.TrimRight(string(key), "\x00")
}

// ruleChunk bounds the rules added or deleted in one netlink batch: the kernel acknowledges each
// rule, and a few hundred acknowledgements overflow the socket's receive buffer (ENOBUFS).
const ruleChunk = 64

// elemChunk bounds the set elements of one netlink batch: the kernel refuses a batch larger than the
// socket's buffer ("message too long"), which a few thousand elements reach.
const elemChunk = 512

// setElements adds (OpAdd) or deletes elems in batches of elemChunk, each flushed and then reported.
func (r *run) setElements(s *nftables.Set, elems []setElem, op overlay.Op) error {
	c := r.d.nft
	for chunk := range slices.Chunk(elems, elemChunk) {
		batch := make([]nftables.SetElement, len(chunk))
		for i, e := range chunk {
			batch[i] = e.elem
		}
		var err error
		if op == overlay.OpAdd {
			err = c.SetAddElements(s, batch)
		} else {
			err = c.SetDeleteElements(s, batch)
		}
		if err == nil {
			err = c.Flush()
		}
		if err != nil {
			return err
		}
		for _, e := range chunk {
			r.change(op, e.object)
		}
	}
	return nil
}

func isNotFound(err error) bool {
	return errors.Is(err, unix.ENOENT)
}

// syncChainAdd adds the rules of pc that ch lacks, each before the next rule it keeps, and queues
// the rules pc does not have for the deletion pass; it reports whether ch now holds all of pc's.
func (r *run) syncChainAdd(pc overlay.NftChain, ch *nftables.Chain, sets map[string]*nftables.Set) bool {
	c := r.d.nft
	have, err := c.GetRules(ch.Table, ch)
	if err != nil && !isNotFound(err) {
		r.fail(overlay.ChainObject(pc.Family, pc.Name), fmt.Errorf("list rules: %w", err))
		return false
	}
	texts := make([]string, len(have))
	for i, rule := range have {
		texts[i], _ = userdata.GetString(rule.UserData, userdata.TypeComment)
	}
	want := make([]string, len(pc.Rules))
	for i, rule := range pc.Rules {
		want[i] = rule.String()
	}
	// Leftmost matching of want as a subsequence of what the chain holds.
	match := make([]int, len(want)) // index into have, or -1
	matched := make([]bool, len(have))
	k := 0
	for i, w := range want {
		match[i] = -1
		for j := k; j < len(have); j++ {
			if texts[j] == w {
				match[i], matched[j], k = j, true, j+1
				break
			}
		}
	}
	// Rules go in batches of ruleChunk, each reported once flushed.
	var queued []string
	flush := func() bool {
		if len(queued) == 0 {
			return true
		}
		if err := c.Flush(); err != nil {
			r.fail(overlay.ChainObject(pc.Family, pc.Name), fmt.Errorf("add rules: %w", err))
			return false
		}
		for _, text := range queued {
			r.change(overlay.OpAdd, overlay.RuleObject(pc.Family, pc.Name, text))
		}
		queued = queued[:0]
		return true
	}
	for i, rule := range pc.Rules {
		if match[i] >= 0 {
			continue
		}
		if len(queued) == ruleChunk && !flush() {
			return false
		}
		nr := &nftables.Rule{Table: ch.Table, Chain: ch, Exprs: ruleExprs(familyOf(pc.Family), rule, sets),
			UserData: userdata.AppendString(nil, userdata.TypeComment, want[i])}
		// Insert before the next kept rule (rules inserted before the same handle keep their
		// order); with none after it, append.
		next := -1
		for j := i + 1; j < len(want); j++ {
			if match[j] >= 0 {
				next = match[j]
				break
			}
		}
		if next >= 0 {
			nr.Position = have[next].Handle
			c.InsertRule(nr)
		} else {
			c.AddRule(nr)
		}
		queued = append(queued, want[i])
	}
	if !flush() {
		return false // the chain's old rules stay until its new ones are all in
	}
	for j, rule := range have {
		if !matched[j] {
			r.nft.staleRules = append(r.nft.staleRules, staleRule{chain: ch, handle: rule.Handle, text: texts[j]})
		}
	}
	return true
}

// nftSetForwardingMark creates or deletes the marker chain that records who turned forwarding on.
func (r *run) nftSetForwardingMark(on bool) error {
	c := r.d.nft
	inet := r.nft.tables["inet"]
	if inet == nil {
		return fmt.Errorf("table inet %s missing", overlay.TableName)
	}
	ch := &nftables.Chain{Name: overlay.ForwardingMarkChain, Table: inet}
	if on {
		c.AddChain(ch)
	} else {
		c.DelChain(ch)
	}
	if err := c.Flush(); err != nil {
		return err
	}
	r.nft.forwardingMark = on
	return nil
}

func (r *run) nftDelete() {
	c := r.d.nft
	if len(r.nft.plan) == 0 {
		for _, f := range families {
			if f.name == "inet" && r.keepForwardingMark {
				continue // its marker chain is the only record that forwarding is ours to turn off
			}
			if t := r.nft.tables[f.name]; t != nil {
				r.nftDeleteOne(overlay.TableObject(f.name), func() { c.DelTable(t) })
			}
		}
		return
	}
	for chunk := range slices.Chunk(r.nft.staleRules, ruleChunk) {
		var queued []string
		for _, s := range chunk {
			object := overlay.RuleObject(tableFamilyName(s.chain.Table), s.chain.Name, s.text)
			if err := c.DelRule(&nftables.Rule{Table: s.chain.Table, Chain: s.chain, Handle: s.handle}); err != nil {
				r.fail(object, err)
				continue
			}
			queued = append(queued, object)
		}
		if err := c.Flush(); err != nil {
			r.fail(overlay.TableObject(tableFamilyName(chunk[0].chain.Table)), fmt.Errorf("delete stale rules: %w", err))
			continue
		}
		for _, object := range queued {
			r.change(overlay.OpDelete, object)
		}
	}
	// Chains the plan no longer has (a port's, once the port is gone) go, each with its rules, only
	// once all the plan has is in place: an old chain may be what still checks a port (the bridge
	// prerouting chain of earlier versions) while its new one could not be made. Then stale
	// elements (a drop count of a port gone, which its chain could no longer add back), then the
	// sets none of ours uses any more: those of earlier versions.
	guarded := r.unguarded == nil
	for _, ch := range r.nft.staleChains {
		if guarded {
			r.nftDeleteOne(overlay.ChainObject(tableFamilyName(ch.Table), ch.Name), func() { c.DelChain(ch) })
		}
	}
	// In a stable order: sets by family and name, elements by name.
	stale := slices.Collect(maps.Keys(r.nft.staleElems))
	slices.SortFunc(stale, func(a, b *nftables.Set) int {
		return cmp.Or(strings.Compare(tableFamilyName(a.Table), tableFamilyName(b.Table)), strings.Compare(a.Name, b.Name))
	})
	for _, s := range stale {
		elems := r.nft.staleElems[s]
		slices.SortFunc(elems, func(a, b setElem) int { return strings.Compare(a.object, b.object) })
		if err := r.setElements(s, elems, overlay.OpDelete); err != nil {
			r.fail(overlay.TableObject(tableFamilyName(s.Table)), fmt.Errorf("delete stale elements of %s: %w", s.Name, err))
		}
	}
	slices.SortFunc(r.nft.staleSets, func(a, b *nftables.Set) int {
		return cmp.Or(strings.Compare(tableFamilyName(a.Table), tableFamilyName(b.Table)), strings.Compare(a.Name, b.Name))
	})
	for _, s := range r.nft.staleSets {
		if guarded {
			r.nftDeleteOne(overlay.SetObject(tableFamilyName(s.Table), s.Name), func() { c.DelSet(s) })
		}
	}
}

// nftDeleteOne queues one deletion (del), sends it, and reports object deleted or failed; an object
// already gone (before Linux 6.16 the kernel deletes a port's chain with its interface) counts as
// deleted.
func (r *run) nftDeleteOne(object string, del func()) bool {
	del()
	if err := r.d.nft.Flush(); err != nil && !isNotFound(err) {
		r.fail(object, fmt.Errorf("delete: %w", err))
		return false
	}
	r.change(overlay.OpDelete, object)
	return true
}

func tableFamilyName(t *nftables.Table) string {
	for _, f := range families {
		if f.fam == t.Family {
			return f.name
		}
	}
	return "inet"
}

// ruleExprs compiles an overlay.Rule into nftables expressions, as `nft` would for the same text.
func ruleExprs(fam nftables.TableFamily, rule overlay.Rule, sets map[string]*nftables.Set) []expr.Any {
	var e []expr.Any
	cmp := func(op expr.CmpOp, data []byte) {
		e = append(e, &expr.Cmp{Op: op, Register: 1, Data: data})
	}
	load := func(base expr.PayloadBase, off, n uint32) {
		e = append(e, &expr.Payload{DestRegister: 1, Base: base, Offset: off, Len: n})
	}
	nfproto := -1
	needProto := func(p int) {
		if fam == nftables.TableFamilyINet && nfproto != p {
			e = append(e, &expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1})
			cmp(expr.CmpOpEq, []byte{byte(p)})
			nfproto = p
		}
	}
	l4 := func(p byte) {
		e = append(e, &expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1})
		cmp(expr.CmpOpEq, []byte{p})
	}
	prefix := func(op expr.CmpOp, p netip.Prefix) {
		if !p.IsSingleIP() {
			m := make([]byte, 4)
			binary.BigEndian.PutUint32(m, ^uint32(0)<<(32-p.Bits()))
			e = append(e, &expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: m, Xor: make([]byte, 4)})
			p = p.Masked()
		}
		cmp(op, p.Addr().AsSlice())
	}
	lookup := func(m overlay.Match) {
		lk := &expr.Lookup{SourceRegister: 1, SetName: m.Name, Invert: m.Neg}
		if s := sets[m.Name]; s != nil {
			lk.SetID = s.ID
		}
		e = append(e, lk)
	}
	for _, m := range rule.Matches {
		op := expr.CmpOpEq
		if m.Neg {
			op = expr.CmpOpNeq
		}
		switch m.Field {
		case overlay.FieldIIFName, overlay.FieldOIFName:
			key := expr.MetaKeyIIFNAME
			if m.Field == overlay.FieldOIFName {
				key = expr.MetaKeyOIFNAME
			}
			e = append(e, &expr.Meta{Key: key, Register: 1})
			cmp(op, ifname(m.Name))
		case overlay.FieldEtherType:
			load(expr.PayloadBaseLLHeader, 12, 2)
			cmp(op, binaryutil.BigEndian.PutUint16(m.Num))
		case overlay.FieldEtherSaddr:
			load(expr.PayloadBaseLLHeader, 6, 6)
			cmp(op, m.MAC)
		case overlay.FieldARPOp:
			load(expr.PayloadBaseNetworkHeader, 6, 2)
			cmp(op, binaryutil.BigEndian.PutUint16(m.Num))
		case overlay.FieldARPSha:
			load(expr.PayloadBaseNetworkHeader, 8, 6)
			cmp(op, m.MAC)
		case overlay.FieldARPSpa:
			load(expr.PayloadBaseNetworkHeader, 14, 4)
			prefix(op, m.Prefix)
		case overlay.FieldARPTpa:
			load(expr.PayloadBaseNetworkHeader, 24, 4)
			prefix(op, m.Prefix)
		case overlay.FieldIPSaddr:
			needProto(unix.NFPROTO_IPV4)
			load(expr.PayloadBaseNetworkHeader, 12, 4)
			prefix(op, m.Prefix)
		case overlay.FieldIPDaddr:
			needProto(unix.NFPROTO_IPV4)
			load(expr.PayloadBaseNetworkHeader, 16, 4)
			prefix(op, m.Prefix)
		case overlay.FieldUDPDport, overlay.FieldUDPSport:
			off := uint32(2)
			if m.Field == overlay.FieldUDPSport {
				off = 0
			}
			l4(unix.IPPROTO_UDP)
			load(expr.PayloadBaseTransportHeader, off, 2)
			cmp(op, binaryutil.BigEndian.PutUint16(m.Num))
		case overlay.FieldICMPType:
			needProto(unix.NFPROTO_IPV4)
			l4(unix.IPPROTO_ICMP)
			load(expr.PayloadBaseTransportHeader, 0, 1)
			cmp(op, []byte{byte(m.Num)})
		case overlay.FieldCtState:
			e = append(e, &expr.Ct{Key: expr.CtKeySTATE, Register: 1},
				&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4,
					Mask: binaryutil.NativeEndian.PutUint32(expr.CtStateBitESTABLISHED | expr.CtStateBitRELATED),
					Xor:  binaryutil.NativeEndian.PutUint32(0)})
			// "ct state established,related" is "masked state != 0".
			if m.Neg {
				cmp(expr.CmpOpEq, binaryutil.NativeEndian.PutUint32(0))
			} else {
				cmp(expr.CmpOpNeq, binaryutil.NativeEndian.PutUint32(0))
			}
		case overlay.FieldIPSaddrSet, overlay.FieldIP6SaddrSet, overlay.FieldIPDaddrSet, overlay.FieldIP6DaddrSet:
			switch m.Field {
			case overlay.FieldIPSaddrSet:
				needProto(unix.NFPROTO_IPV4)
				load(expr.PayloadBaseNetworkHeader, 12, 4)
			case overlay.FieldIPDaddrSet:
				needProto(unix.NFPROTO_IPV4)
				load(expr.PayloadBaseNetworkHeader, 16, 4)
			case overlay.FieldIP6SaddrSet:
				needProto(unix.NFPROTO_IPV6)
				load(expr.PayloadBaseNetworkHeader, 8, 16)
			default:
				needProto(unix.NFPROTO_IPV6)
				load(expr.PayloadBaseNetworkHeader, 24, 16)
			}
			lookup(m)
		}
	}
	if rule.Counter {
		e = append(e, &expr.Counter{})
	}
	if rule.Tally != "" {
		e = append(e, &expr.Meta{Key: expr.MetaKeyIIFNAME, Register: 1})
		ds := &expr.Dynset{SrcRegKey: 1, SetName: rule.Tally, Operation: unix.NFT_DYNSET_OP_UPDATE}
		if s := sets[rule.Tally]; s != nil {
			ds.SetID = s.ID
		}
		e = append(e, ds)
	}
	if target := rule.Verdict.JumpTarget(); target != "" {
		return append(e, &expr.Verdict{Kind: expr.VerdictJump, Chain: target})
	}
	switch rule.Verdict {
	case overlay.Accept:
		e = append(e, &expr.Verdict{Kind: expr.VerdictAccept})
	case overlay.Drop:
		e = append(e, &expr.Verdict{Kind: expr.VerdictDrop})
	case overlay.Masquerade:
		e = append(e, &expr.Masq{})
	}
	return e
}

// ifname is the comparison data for an interface name: the name padded to IFNAMSIZ, or for a
// trailing "*" wildcard only the prefix (nft compiles "vxbr*" the same way).
func ifname(name string) []byte {
	if len(name) > 0 && name[len(name)-1] == '*' {
		return []byte(name[:len(name)-1])
	}
	b := make([]byte, unix.IFNAMSIZ)
	copy(b, name)
	return b
}

var _ overlay.DropCounter = (*Datapath)(nil)

// PortDrops implements overlay.DropCounter: the counters of the port_drops set's elements.
func (d *Datapath) PortDrops(ctx context.Context) (map[string]uint64, error) {
	d.readMu.Lock()
	defer d.readMu.Unlock()
	if d.nftRead == nil {
		return nil, ErrClosed
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	nd := &nftables.Table{Name: overlay.TableName, Family: nftables.TableFamilyNetdev}
	set, err := d.nftRead.GetSetByName(nd, overlay.PortDropSet)
	if isNotFound(err) {
		return map[string]uint64{}, nil // no secured port yet, or our tables removed
	}
	if err != nil {
		return nil, fmt.Errorf("read set %s: %w", overlay.PortDropSet, err)
	}
	elems, err := d.nftRead.GetSetElements(set)
	if err != nil {
		return nil, fmt.Errorf("list set %s: %w", overlay.PortDropSet, err)
	}
	drops := make(map[string]uint64, len(elems))
	for _, e := range elems {
		var n uint64
		if e.Counter != nil {
			n = e.Counter.Packets
		}
		drops[ifnameText(e.Key)] = n
	}
	return drops, nil
}
