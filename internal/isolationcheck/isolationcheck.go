// Package isolationcheck owns the checks of DESIGN.md's first rule (every
// piece of user data is isolated by user) that look at the code rather than
// at a running daemon:
//
//   - Check, a static check over the daemon's source (go/parser and go/ast,
//     no type checker): no function takes an optional user id, every method
//     of a per-user store takes one, no "user:" key is spelled outside
//     daemon/userid, and no KV write names a key that id.Key did not build.
//   - KeyProblem and RecordingKV, the run-time twin used by the isolation
//     sweeps: every key written through the KV is user:{uuid}: of an
//     existing user, or a lease.
//
// It is a package of its own (not a test of the root package) so that the
// rules are one small library with table tests of their own, run without
// the root package's end-to-end set-up (building and starting the daemon),
// and so that the sweeps of daemon/api and daemon/pluginhost share the key
// audit. Only tests import it.
package isolationcheck

import (
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"maps"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
)

// The rules, as findings name them.
const (
	// RuleOptionalUser (a): a parameter of type *userid.ID or
	// ...userid.ID, or a default-like helper (…OrDefault, …Optional ...)
	// taking a userid.ID: a user id must be given, one, always.
	RuleOptionalUser = "optional-user-id"
	// RuleStoreUser (b): an exported method of a per-user store without a
	// userid.ID parameter, unless spansUsers allows it.
	RuleStoreUser = "store-method-without-user-id"
	// RuleUserLiteral (c): a string literal starting with "user:" outside
	// daemon/userid: user keys are built with id.Key only.
	RuleUserLiteral = "user-key-literal"
	// RuleKVKey (d): a KV write whose key is a string literal, a
	// concatenation starting with one, or a fmt.Sprintf, rather than
	// id.Key; lease keys excepted.
	RuleKVKey = "kv-key-not-built-by-id-key"
)

const (
	useridPath = "github.com/inboxd/inboxd/daemon/userid"
	kvPath     = "github.com/inboxd/inboxd/daemon/storage/kv"
	useridDir  = "daemon/userid"
	kvDir      = "daemon/storage/kv"
)

// storeTypes are, by package directory, the types whose exported methods
// read or write per-user data: each must take a userid.ID.
var storeTypes = map[string][]string{
	"daemon/settings": {"Store"},
	"daemon/workflow": {"Store"},
	"daemon/logs":     {"Store"},
	"daemon/jobs":     {"Manager"},
	"daemon/vectors":  {"Store", "Embedded", "Qdrant"},
	"daemon/users":    {"Store"},
}

// spansUsers are the store methods that legitimately take no user id, and
// why. Keep it short: each entry is a place where one user's code could
// reach another's data.
var spansUsers = map[string]string{
	"daemon/workflow.Store.OnInstanceCreated":      "registers a hook; reads and writes no data",
	"daemon/workflow.Store.QueueDepth":             "counts queued instances of all users for a metric; returns no user data",
	"daemon/workflow.Store.Claim":                  "the runner claims the next due instance of any user; the instance carries its user",
	"daemon/workflow.Store.UsersWithActiveTrigger": "the scheduler's list of users to wake: ids only",
	"daemon/jobs.Manager.Run":                      "lifecycle: the cron and the recovery sweep go over all users, each job then runs for one",
	"daemon/jobs.Manager.Close":                    "lifecycle",
	"daemon/vectors.Embedded.Close":                "lifecycle",
	"daemon/vectors.Qdrant.Close":                  "lifecycle",
	"daemon/vectors.Qdrant.Tenancy":                "configuration, no data",
	"daemon/users.Store.Create":                    "makes a user: there is no id yet",
	"daemon/users.Store.EnsureDefault":             "makes the default user of auth modes none and password",
	"daemon/users.Store.ByEmail":                   "resolves an identity to its user (auth, CLI)",
	"daemon/users.Store.BySubject":                 "resolves an OIDC subject to its user (auth)",
	"daemon/users.Store.FindOrCreateBySubject":     "OIDC login: the subject's user",
	"daemon/users.Store.Lookup":                    "resolves an email or id to its user (CLI)",
	"daemon/users.Store.UserByAPIKey":              "auth: the key names its user",
	"daemon/users.Store.List":                      "the admin's listing of users (admin API, CLI, the jobs' cron)",
}

// defaultLike names helpers that would make a user id optional.
var defaultLike = regexp.MustCompile(`(?i)(OrDefault|Optional|OrZero|OrNil|OrAny|Maybe|Fallback)$`)

// kvWrites are the kv.Store methods that write, and whether every argument
// after the context is a key (Delete) rather than just the first.
var kvWrites = map[string]bool{
	"Set": false, "SetNX": false, "CompareAndSwap": false, "CompareAndDelete": false, "Incr": false,
	"SetMany": false, "Delete": true,
}

// File is one Go source file: its slash-separated path from the repository
// root, and its text.
type File struct {
	Path string
	Src  []byte
}

// Finding is one violation of a rule.
type Finding struct {
	Pos  token.Position
	Rule string
	Msg  string
}

func (f Finding) String() string { return fmt.Sprintf("%s: %s: %s", f.Pos, f.Rule, f.Msg) }

// Load reads the non-test .go files below each of dirs (relative to root,
// slash-separated), skipping testdata directories.
func Load(root string, dirs ...string) ([]File, error) {
	var files []File
	for _, dir := range dirs {
		err := filepath.WalkDir(filepath.Join(root, filepath.FromSlash(dir)), func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			if d.IsDir() {
				if d.Name() == "testdata" {
					return filepath.SkipDir
				}
				return nil
			}
			if !strings.HasSuffix(p, ".go") || strings.HasSuffix(p, "_test.go") {
				return nil
			}
			src, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			rel, err := filepath.Rel(root, p)
			if err != nil {
				return err
			}
			files = append(files, File{Path: filepath.ToSlash(rel), Src: src})
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("isolationcheck: %w", err)
		}
	}
	return files, nil
}

// pkg is the parsed files of one directory.
type pkg struct {
	dir   string
	files []*ast.File
	funcs map[string]*ast.FuncDecl // package-level functions by name
	vals  map[string]ast.Expr      // package-level var and const values by name
	kv    map[string]bool          // names declared with a kv store type
}

// checker runs the rules over parsed packages.
type checker struct {
	fset     *token.FileSet
	pkgs     map[string]*pkg
	findings []Finding
	methods  map[string]bool // "dir.Type.Method" of every store method seen
	kvCalls  int             // KV writes whose keys were checked
}

// Check parses files and runs every rule over them. A file that does not
// parse is an error.
func Check(files []File) ([]Finding, error) {
	c, err := parse(files)
	if err != nil {
		return nil, err
	}
	c.run()
	return c.findings, nil
}

// StaleAllowances lists the allow-list entries and store types of this
// package that name nothing in files, so that the lists stay true.
func StaleAllowances(files []File) ([]string, error) {
	c, err := parse(files)
	if err != nil {
		return nil, err
	}
	c.run()
	var stale []string
	for dir, types := range storeTypes {
		for _, typ := range types {
			if !c.hasType(dir, typ) {
				stale = append(stale, fmt.Sprintf("store type %s.%s does not exist", dir, typ))
			}
		}
	}
	for m := range spansUsers {
		if !c.methods[m] {
			stale = append(stale, "allowed method "+m+" does not exist")
		}
	}
	sort.Strings(stale)
	return stale, nil
}

func parse(files []File) (*checker, error) {
	c := &checker{fset: token.NewFileSet(), pkgs: map[string]*pkg{}, methods: map[string]bool{}}
	for _, f := range files {
		af, err := parser.ParseFile(c.fset, f.Path, f.Src, parser.SkipObjectResolution)
		if err != nil {
			return nil, fmt.Errorf("isolationcheck: %w", err)
		}
		dir := path.Dir(f.Path)
		p := c.pkgs[dir]
		if p == nil {
			p = &pkg{dir: dir, funcs: map[string]*ast.FuncDecl{}, vals: map[string]ast.Expr{}, kv: map[string]bool{}}
			c.pkgs[dir] = p
		}
		p.files = append(p.files, af)
	}
	for _, p := range c.pkgs {
		p.index()
	}
	return c, nil
}

func (c *checker) run() {
	for _, dir := range slices.Sorted(maps.Keys(c.pkgs)) {
		p := c.pkgs[dir]
		for _, f := range p.files {
			c.optionalUser(p, f)
			c.storeMethods(p, f)
			c.userLiterals(p, f)
			c.kvKeys(p, f)
		}
	}
	sort.SliceStable(c.findings, func(i, j int) bool {
		a, b := c.findings[i].Pos, c.findings[j].Pos
		if a.Filename != b.Filename {
			return a.Filename < b.Filename
		}
		return a.Line < b.Line
	})
}

func (c *checker) report(at token.Pos, rule, format string, args ...any) {
	c.findings = append(c.findings, Finding{Pos: c.fset.Position(at), Rule: rule, Msg: fmt.Sprintf(format, args...)})
}

// importName is the name file f uses for the package at importPath ("" if
// f does not import it).
func importName(f *ast.File, importPath string) string {
	for _, imp := range f.Imports {
		if p, _ := strconv.Unquote(imp.Path.Value); p == importPath {
			if imp.Name != nil {
				return imp.Name.Name
			}
			return path.Base(importPath)
		}
	}
	return ""
}

// isUserID reports whether e names userid.ID in f of package dir.
func isUserID(dir string, f *ast.File, e ast.Expr) bool {
	if dir == useridDir {
		id, ok := e.(*ast.Ident)
		return ok && id.Name == "ID"
	}
	return isQualified(e, importName(f, useridPath), "ID")
}

func isQualified(e ast.Expr, pkgName, name string) bool {
	sel, ok := e.(*ast.SelectorExpr)
	if !ok || pkgName == "" {
		return false
	}
	x, ok := sel.X.(*ast.Ident)
	return ok && x.Name == pkgName && sel.Sel.Name == name
}

// optionalUser is rule (a): every function type, declared or literal, in a
// declaration, an interface or a field.
func (c *checker) optionalUser(p *pkg, f *ast.File) {
	names := map[*ast.FuncType]string{}
	ast.Inspect(f, func(n ast.Node) bool {
		switch x := n.(type) {
		case *ast.FuncDecl:
			names[x.Type] = x.Name.Name
		case *ast.Field:
			if t, ok := x.Type.(*ast.FuncType); ok && len(x.Names) > 0 { // an interface method or a func field
				names[t] = x.Names[0].Name
			}
		}
		return true
	})
	ast.Inspect(f, func(n ast.Node) bool {
		ft, ok := n.(*ast.FuncType)
		if !ok || ft.Params == nil {
			return true
		}
		name := names[ft]
		for _, field := range ft.Params.List {
			switch t := field.Type.(type) {
			case *ast.StarExpr:
				if isUserID(p.dir, f, t.X) {
					c.report(field.Pos(), RuleOptionalUser, "a *userid.ID parameter makes the user id optional; take a userid.ID")
				}
			case *ast.Ellipsis:
				if isUserID(p.dir, f, t.Elt) {
					c.report(field.Pos(), RuleOptionalUser, "a ...userid.ID parameter makes the user id optional; take one userid.ID")
				}
			default:
				if name != "" && defaultLike.MatchString(name) && isUserID(p.dir, f, t) {
					c.report(field.Pos(), RuleOptionalUser, "%s takes a userid.ID and is named like a default: a user id has no default", name)
				}
			}
		}
		return true
	})
}

// storeMethods is rule (b).
func (c *checker) storeMethods(p *pkg, f *ast.File) {
	types := storeTypes[p.dir]
	if len(types) == 0 {
		return
	}
	check := func(typ, method string, ft *ast.FuncType, at token.Pos) {
		key := p.dir + "." + typ + "." + method
		c.methods[key] = true
		if !ast.IsExported(method) || spansUsers[key] != "" {
			return
		}
		for _, field := range ft.Params.List {
			if isUserID(p.dir, f, field.Type) {
				return
			}
		}
		c.report(at, RuleStoreUser, "%s.%s reads or writes per-user data but takes no userid.ID (or belongs in the commented allow-list spansUsers)", typ, method)
	}
	for _, decl := range f.Decls {
		switch d := decl.(type) {
		case *ast.FuncDecl:
			if d.Recv == nil || len(d.Recv.List) == 0 {
				continue
			}
			recv := d.Recv.List[0].Type
			if s, ok := recv.(*ast.StarExpr); ok {
				recv = s.X
			}
			if id, ok := recv.(*ast.Ident); ok && slices.Contains(types, id.Name) {
				check(id.Name, d.Name.Name, d.Type, d.Pos())
			}
		case *ast.GenDecl:
			for _, spec := range d.Specs {
				ts, ok := spec.(*ast.TypeSpec)
				if !ok || !slices.Contains(types, ts.Name.Name) {
					continue
				}
				it, ok := ts.Type.(*ast.InterfaceType)
				if !ok {
					continue
				}
				for _, m := range it.Methods.List {
					if ft, ok := m.Type.(*ast.FuncType); ok && len(m.Names) > 0 {
						check(ts.Name.Name, m.Names[0].Name, ft, m.Pos())
					}
				}
			}
		}
	}
}

func (c *checker) hasType(dir, typ string) bool {
	p := c.pkgs[dir]
	if p == nil {
		return false
	}
	for _, f := range p.files {
		for _, decl := range f.Decls {
			if g, ok := decl.(*ast.GenDecl); ok {
				for _, spec := range g.Specs {
					if ts, ok := spec.(*ast.TypeSpec); ok && ts.Name.Name == typ {
						return true
					}
				}
			}
		}
	}
	return false
}

// userLiterals is rule (c).
func (c *checker) userLiterals(p *pkg, f *ast.File) {
	if p.dir == useridDir {
		return
	}
	ast.Inspect(f, func(n ast.Node) bool {
		if lit, ok := n.(*ast.BasicLit); ok && lit.Kind == token.STRING {
			if s, err := strconv.Unquote(lit.Value); err == nil && strings.HasPrefix(s, "user:") {
				c.report(lit.Pos(), RuleUserLiteral, "the literal %q spells a user key; build it with id.Key", s)
			}
		}
		return true
	})
}

// index records p's package-level functions and values, and the names
// declared with a kv store type (fields, parameters, variables) or
// assigned a kv constructor's result.
func (p *pkg) index() {
	for _, f := range p.files {
		kvName := importName(f, kvPath)
		isKV := func(e ast.Expr) bool {
			if s, ok := e.(*ast.StarExpr); ok {
				e = s.X
			}
			if p.dir == kvDir {
				return false // the backends themselves
			}
			return isQualified(e, kvName, "Store") || isQualified(e, kvName, "SQLStore") || isQualified(e, kvName, "RedisStore")
		}
		for _, decl := range f.Decls {
			switch d := decl.(type) {
			case *ast.FuncDecl:
				if d.Recv == nil {
					p.funcs[d.Name.Name] = d
				}
			case *ast.GenDecl:
				for _, spec := range d.Specs {
					if vs, ok := spec.(*ast.ValueSpec); ok {
						for i, n := range vs.Names {
							if i < len(vs.Values) {
								p.vals[n.Name] = vs.Values[i]
							}
						}
					}
				}
			}
		}
		ast.Inspect(f, func(n ast.Node) bool {
			switch x := n.(type) {
			case *ast.Field:
				if isKV(x.Type) {
					for _, name := range x.Names {
						p.kv[name.Name] = true
					}
				}
			case *ast.ValueSpec:
				if x.Type != nil && isKV(x.Type) {
					for _, name := range x.Names {
						p.kv[name.Name] = true
					}
				}
			case *ast.AssignStmt:
				for i, rhs := range x.Rhs {
					if call, ok := rhs.(*ast.CallExpr); ok && i < len(x.Lhs) &&
						(isQualified(call.Fun, kvName, "NewSQL") || isQualified(call.Fun, kvName, "NewRedis")) {
						if id, ok := x.Lhs[i].(*ast.Ident); ok {
							p.kv[id.Name] = true
						}
					}
				}
			}
			return true
		})
	}
}

// kvKeys is rule (d): the keys of every write on a name of a kv store type.
func (c *checker) kvKeys(p *pkg, f *ast.File) {
	fmtName := importName(f, "fmt")
	for _, decl := range f.Decls {
		fn, ok := decl.(*ast.FuncDecl)
		if !ok || fn.Body == nil {
			continue
		}
		ast.Inspect(fn.Body, func(n ast.Node) bool {
			call, ok := n.(*ast.CallExpr)
			if !ok {
				return true
			}
			sel, ok := call.Fun.(*ast.SelectorExpr)
			if !ok {
				return true
			}
			allKeys, write := kvWrites[sel.Sel.Name]
			if !write || !p.kv[lastName(sel.X)] || len(call.Args) < 2 {
				return true
			}
			c.kvCalls++
			keys := call.Args[1:2]
			if allKeys {
				keys = call.Args[1:]
			}
			for _, key := range keys {
				kc := &keyCheck{p: p, fn: fn, fmtName: fmtName, seen: map[ast.Node]bool{}}
				if problem := kc.problem(key, 0); problem != "" {
					c.report(call.Pos(), RuleKVKey, "KV %s with %s; build user keys with id.Key (only %s may be written without it)",
						sel.Sel.Name, problem, strings.Join(AllowedNonUserPrefixes(), ", "))
				}
			}
			return true
		})
	}
}

// lastName is the last identifier of x (p.kv -> kv, store -> store).
func lastName(x ast.Expr) string {
	switch e := x.(type) {
	case *ast.Ident:
		return e.Name
	case *ast.SelectorExpr:
		return e.Sel.Name
	}
	return ""
}

// keyCheck follows one key expression back to how it was built.
type keyCheck struct {
	p       *pkg
	fn      *ast.FuncDecl // the function the expression is in
	fmtName string
	seen    map[ast.Node]bool
}

const maxKeyDepth = 5

// problem says what is wrong with how key e is built, or "". Expressions it
// cannot follow (a parameter, a field, another package's function) pass:
// the rule is about keys spelled out, not proven.
func (k *keyCheck) problem(e ast.Expr, depth int) string {
	if depth > maxKeyDepth || e == nil || k.seen[e] {
		return ""
	}
	k.seen[e] = true
	switch x := e.(type) {
	case *ast.ParenExpr:
		return k.problem(x.X, depth)
	case *ast.BasicLit:
		if x.Kind != token.STRING {
			return ""
		}
		s, _ := strconv.Unquote(x.Value)
		if allowedLiteral(s) {
			return ""
		}
		return fmt.Sprintf("the literal key %q", s)
	case *ast.BinaryExpr:
		if x.Op == token.ADD {
			if lit, ok := x.X.(*ast.BasicLit); ok && lit.Kind == token.STRING {
				s, _ := strconv.Unquote(lit.Value)
				if allowedLiteral(s) {
					return ""
				}
				return fmt.Sprintf("a key built from the literal %q", s)
			}
			return k.problem(x.X, depth+1)
		}
	case *ast.CallExpr:
		return k.call(x, depth)
	case *ast.Ident:
		return k.ident(x, depth)
	case *ast.CompositeLit:
		for _, el := range x.Elts {
			if kv, ok := el.(*ast.KeyValueExpr); ok {
				el = kv.Key // a map literal: its keys
			}
			if problem := k.problem(el, depth+1); problem != "" {
				return problem
			}
		}
	}
	return ""
}

func (k *keyCheck) call(x *ast.CallExpr, depth int) string {
	switch fun := x.Fun.(type) {
	case *ast.SelectorExpr:
		if fun.Sel.Name == "Key" || fun.Sel.Name == "KeyPrefix" {
			return "" // id.Key(...)
		}
		if id, ok := fun.X.(*ast.Ident); ok && k.fmtName != "" && id.Name == k.fmtName && strings.HasPrefix(fun.Sel.Name, "Sprint") {
			if len(x.Args) > 0 {
				if lit, ok := x.Args[0].(*ast.BasicLit); ok && lit.Kind == token.STRING {
					if s, _ := strconv.Unquote(lit.Value); allowedLiteral(s) {
						return ""
					}
				}
			}
			return "a key made by fmt." + fun.Sel.Name
		}
	case *ast.Ident:
		if fun.Name == "append" {
			for _, a := range x.Args[1:] {
				if problem := k.problem(a, depth+1); problem != "" {
					return problem
				}
			}
			return ""
		}
		if fd := k.p.funcs[fun.Name]; fd != nil && fd.Body != nil {
			return k.returns(fd, depth+1)
		}
	}
	return ""
}

// returns checks the first result of every return of fd.
func (k *keyCheck) returns(fd *ast.FuncDecl, depth int) string {
	outer := k.fn
	k.fn = fd
	defer func() { k.fn = outer }()
	problem := ""
	ast.Inspect(fd.Body, func(n ast.Node) bool {
		if _, ok := n.(*ast.FuncLit); ok {
			return false
		}
		if r, ok := n.(*ast.ReturnStmt); ok && len(r.Results) > 0 && problem == "" {
			problem = k.problem(r.Results[0], depth)
		}
		return problem == ""
	})
	return problem
}

// ident follows a name to what the enclosing function assigns it (and,
// for a map or slice, the keys it indexes or appends), or to a
// package-level value.
func (k *keyCheck) ident(x *ast.Ident, depth int) string {
	var values []ast.Expr
	ast.Inspect(k.fn.Body, func(n ast.Node) bool {
		switch s := n.(type) {
		case *ast.AssignStmt:
			for i, lhs := range s.Lhs {
				switch l := lhs.(type) {
				case *ast.Ident:
					if l.Name == x.Name && len(s.Lhs) == len(s.Rhs) {
						values = append(values, s.Rhs[i])
					}
				case *ast.IndexExpr: // m[key] = v
					if id, ok := l.X.(*ast.Ident); ok && id.Name == x.Name {
						values = append(values, l.Index)
					}
				}
			}
		case *ast.ValueSpec:
			for i, n := range s.Names {
				if n.Name == x.Name && i < len(s.Values) {
					values = append(values, s.Values[i])
				}
			}
		}
		return true
	})
	if len(values) == 0 {
		if v, ok := k.p.vals[x.Name]; ok {
			values = append(values, v)
		}
	}
	for _, v := range values {
		if problem := k.problem(v, depth+1); problem != "" {
			return problem
		}
	}
	return ""
}

// allowedLiteral reports whether a key spelled s is one that needs no
// id.Key: a lease key.
func allowedLiteral(s string) bool {
	for _, prefix := range AllowedNonUserPrefixes() {
		if strings.HasPrefix(s, prefix) {
			return true
		}
	}
	return false
}
