package api

import (
	"encoding/base64"
	"sort"
	"strings"

	vxfabricv1 "github.com/vxfabric/vxfabric/proto/vxfabric/v1"
)

// maxPageSize bounds a page of a list call; a larger page_size counts as this.
const maxPageSize = 1000

// page cuts the page that size and token ask for out of items, which are sorted by key; it returns
// the page and the token of the next one ("" after the last). A token is the key of the page's last
// item and the filter it was made under, so the next page starts after that item even if items
// came or went in between, and a token used with another filter is refused (InvalidArgument).
// Size 0 is every item from the token on.
func page[T any](items []T, size int32, token, filter string, key func(T) string) ([]T, string, error) {
	if size < 0 {
		return nil, "", invalid("page_size %d: want 0 (all) or more", size)
	}
	start := 0
	if token != "" {
		f, k, ok := strings.Cut(token, ".")
		tokFilter, ferr := base64.RawURLEncoding.DecodeString(f)
		after, kerr := base64.RawURLEncoding.DecodeString(k)
		if !ok || ferr != nil || kerr != nil || string(tokFilter) != filter {
			return nil, "", invalid("page_token %s: not a token of this list with these filters", vxfabricv1.Quote(token))
		}
		start = sort.Search(len(items), func(i int) bool { return key(items[i]) > string(after) })
	}
	rest := items[start:]
	if size == 0 || int(min(size, maxPageSize)) >= len(rest) {
		return rest, "", nil
	}
	out := rest[:min(size, maxPageSize)]
	next := base64.RawURLEncoding.EncodeToString([]byte(filter)) + "." +
		base64.RawURLEncoding.EncodeToString([]byte(key(out[len(out)-1])))
	return out, next, nil
}

// nameKey is the key of page for resources sorted by tenant, then name: "\x00" sorts before every
// character of a name, so the keys sort as the resources do.
func nameKey(tenant, name string) string { return tenant + "\x00" + name }
