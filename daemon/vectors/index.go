package vectors

import (
	"container/list"
	"runtime"
	"sort"
	"sync"
)

// userIndex is one user's points in memory: unit vectors in one flat slice
// (row i is vecs[i*dims:(i+1)*dims]), their thread ids, and the payload
// fields filters and distributions use. Searches hold mu for reading; the
// in-place application of this process's writes holds it for writing.
type userIndex struct {
	mu      sync.RWMutex
	version int64 // vector_collections.version it reflects; guarded by the cache entry's lock
	model   string
	dims    int

	ids    []string
	pos    map[string]int
	vecs   []float32
	fields []map[string]any
	bytes  int64 // estimated memory

	dot func(a, b []float32) float32 // the CPU's fastest kernel (dotKernel)
}

func newUserIndex(version int64, model string, dims int, kernel func(a, b []float32) float32) *userIndex {
	return &userIndex{version: version, model: model, dims: dims, pos: map[string]int{}, dot: kernel}
}

// Per-point memory estimate beyond the vector: id string header and map
// entry, fields map header.
const pointOverhead = 16 + 48 + 48

// put adds or replaces a point (vec already unit length). Callers hold mu
// for writing, or own the index exclusively.
func (ix *userIndex) put(id string, vec []float32, fields map[string]any) {
	if i, ok := ix.pos[id]; ok {
		copy(ix.vecs[i*ix.dims:(i+1)*ix.dims], vec)
		ix.bytes += fieldsSize(fields) - fieldsSize(ix.fields[i])
		ix.fields[i] = fields
		return
	}
	ix.pos[id] = len(ix.ids)
	ix.ids = append(ix.ids, id)
	ix.vecs = append(ix.vecs, vec...)
	ix.fields = append(ix.fields, fields)
	ix.bytes += int64(4*ix.dims) + int64(2*len(id)) + pointOverhead + fieldsSize(fields)
}

func fieldsSize(f map[string]any) int64 {
	var n int64
	for k, v := range f {
		n += int64(len(k)) + 32
		switch t := v.(type) {
		case string:
			n += int64(len(t))
		case []string:
			for _, s := range t {
				n += int64(len(s)) + 16
			}
		}
	}
	return n
}

// found is one search result.
type found struct {
	id    string
	score float32
	vec   []float32 // a copy of the unit vector
}

// scored is a heap element: a score and a row.
type scored struct {
	score float32
	row   int
}

// parallelWork is the number of multiply-adds above which a search is split
// across the available CPUs.
const parallelWork = 1 << 20

// search returns the k rows most similar to q (a unit vector), best first,
// skipping excluded ids and rows failing conds.
func (ix *userIndex) search(q []float32, k int, exclude map[string]bool, conds []cond) []found {
	ix.mu.RLock()
	defer ix.mu.RUnlock()
	n := len(ix.ids)
	keep := func(row int) bool {
		if exclude != nil && exclude[ix.ids[row]] {
			return false
		}
		for _, c := range conds {
			v, ok := ix.fields[row][c.field]
			if !ok || !c.matches(v) {
				return false
			}
		}
		return true
	}
	if exclude == nil && len(conds) == 0 {
		keep = nil
	}
	workers := 1
	if n*ix.dims >= parallelWork {
		workers = min(runtime.GOMAXPROCS(0), n/1024+1)
	}
	var best []scored
	if workers <= 1 {
		best = ix.topK(q, k, 0, n, keep)
	} else {
		parts := make([][]scored, workers)
		var wg sync.WaitGroup
		step := (n + workers - 1) / workers
		for w := range workers {
			lo, hi := w*step, min((w+1)*step, n)
			wg.Go(func() { parts[w] = ix.topK(q, k, lo, hi, keep) })
		}
		wg.Wait()
		for _, p := range parts {
			best = append(best, p...)
		}
	}
	sort.Slice(best, func(i, j int) bool {
		if best[i].score != best[j].score {
			return best[i].score > best[j].score
		}
		return best[i].row < best[j].row
	})
	if len(best) > k {
		best = best[:k]
	}
	out := make([]found, len(best))
	for i, b := range best {
		vec := make([]float32, ix.dims)
		copy(vec, ix.vecs[b.row*ix.dims:])
		out[i] = found{id: ix.ids[b.row], score: b.score, vec: vec}
	}
	return out
}

// topK scans rows [lo, hi) and keeps the k best in a min-heap (unordered).
func (ix *userIndex) topK(q []float32, k, lo, hi int, keep func(int) bool) []scored {
	d := ix.dims
	h := make([]scored, 0, k)
	for row := lo; row < hi; row++ {
		if keep != nil && !keep(row) {
			continue
		}
		s := ix.dot(q, ix.vecs[row*d:(row+1)*d])
		switch {
		case len(h) < k:
			h = append(h, scored{s, row})
			siftUp(h, len(h)-1)
		case s > h[0].score:
			h[0] = scored{s, row}
			siftDown(h, 0)
		}
	}
	return h
}

func siftUp(h []scored, i int) {
	for i > 0 {
		p := (i - 1) / 2
		if h[p].score <= h[i].score {
			return
		}
		h[p], h[i] = h[i], h[p]
		i = p
	}
}

func siftDown(h []scored, i int) {
	for {
		l := 2*i + 1
		if l >= len(h) {
			return
		}
		m := l
		if r := l + 1; r < len(h) && h[r].score < h[l].score {
			m = r
		}
		if h[i].score <= h[m].score {
			return
		}
		h[i], h[m] = h[m], h[i]
		i = m
	}
}

// dot is the portable dot product of a and b (len(b) >= len(a)), with four
// independent accumulators; dotKernel may offer a faster one.
func dot(a, b []float32) float32 {
	b = b[:len(a)]
	var s0, s1, s2, s3 float32
	i := 0
	for ; i+8 <= len(a); i += 8 {
		aa, bb := a[i:i+8:i+8], b[i:i+8:i+8]
		s0 += aa[0]*bb[0] + aa[4]*bb[4]
		s1 += aa[1]*bb[1] + aa[5]*bb[5]
		s2 += aa[2]*bb[2] + aa[6]*bb[6]
		s3 += aa[3]*bb[3] + aa[7]*bb[7]
	}
	for ; i < len(a); i++ {
		s0 += a[i] * b[i]
	}
	return (s0 + s1) + (s2 + s3)
}

// distribution counts a field's string values into counts.
func (ix *userIndex) distribution(field string, counts map[string]int) {
	ix.mu.RLock()
	defer ix.mu.RUnlock()
	for _, f := range ix.fields {
		if v, ok := f[field]; ok {
			countFieldValue(counts, v)
		}
	}
}

// indexCache holds users' indexes within a memory bound, evicting the least
// recently used. Lock order: an entry's mu, then the cache's mu.
type indexCache struct {
	max int64

	mu     sync.Mutex
	used   int64
	byUser map[string]*cacheEntry
	lru    list.List // of *cacheEntry; front is the most recently used
}

// cacheEntry is one user's slot: mu serialises loading (one load per user
// at a time) and guards idx.
type cacheEntry struct {
	user string
	elem *list.Element // guarded by indexCache.mu
	size int64         // accounted bytes, guarded by indexCache.mu

	mu  sync.Mutex
	idx *userIndex
}

func newIndexCache(max int64) *indexCache {
	return &indexCache{max: max, byUser: map[string]*cacheEntry{}}
}

// entry returns the user's entry, creating it, and marks it most recently used.
func (c *indexCache) entry(user string) *cacheEntry {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.byUser[user]
	if !ok {
		e = &cacheEntry{user: user}
		e.elem = c.lru.PushFront(e)
		c.byUser[user] = e
		return e
	}
	c.lru.MoveToFront(e.elem)
	return e
}

// get returns the user's index for collection col, calling load when the
// cached one is absent or of another version.
func (c *indexCache) get(user string, col collectionInfo, load func() (*userIndex, error)) (*userIndex, error) {
	e := c.entry(user)
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.idx != nil && e.idx.version == col.version && e.idx.dims == col.dims {
		return e.idx, nil
	}
	idx, err := load()
	if err != nil {
		return nil, err
	}
	e.idx = idx
	c.resize(e, idx.bytes)
	return idx, nil
}

// applyUpsert brings a cached index to version by applying the points this
// process just wrote, when it was exactly one write behind; otherwise it
// drops the index (the next search reloads).
func (c *indexCache) applyUpsert(user string, version int64, dims int, points []preparedPoint) {
	c.mu.Lock()
	e := c.byUser[user]
	c.mu.Unlock()
	if e == nil {
		return
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	idx := e.idx
	if idx == nil {
		return
	}
	if idx.version != version-1 || idx.dims != dims {
		e.idx = nil
		c.resize(e, 0)
		return
	}
	idx.mu.Lock()
	for _, p := range points {
		idx.put(p.id, unit(p.vector), indexFields(p.payload))
	}
	idx.version = version
	size := idx.bytes
	idx.mu.Unlock()
	c.resize(e, size)
}

// resize records e's new size and evicts least recently used entries while
// over the bound; e itself goes too when it alone exceeds the bound. Called
// with e.mu held.
func (c *indexCache) resize(e *cacheEntry, size int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.byUser[e.user] != e {
		return // evicted or dropped meanwhile: not accounted any more
	}
	c.used += size - e.size
	e.size = size
	for c.used > c.max {
		back := c.lru.Back()
		victim := back.Value.(*cacheEntry)
		c.removeLocked(victim)
		if victim == e {
			break
		}
	}
}

// drop forgets the user's index (Recreate, a deleted collection).
func (c *indexCache) drop(user string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.byUser[user]; ok {
		c.removeLocked(e)
	}
}

func (c *indexCache) removeLocked(e *cacheEntry) {
	c.lru.Remove(e.elem)
	delete(c.byUser, e.user)
	c.used -= e.size
	e.size = 0
}

func (c *indexCache) clear() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.byUser = map[string]*cacheEntry{}
	c.lru.Init()
	c.used = 0
}

// usedBytes reports the accounted memory (for tests).
func (c *indexCache) usedBytes() (int64, int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.used, len(c.byUser)
}
