# inboxd: build, test and install. GNU make.

GO          ?= go
BINARY      := bin/inboxd
PKG         := github.com/inboxd/inboxd
VERSION     ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS     := -X $(PKG)/daemon/cli.version=$(VERSION)
# Flags for `make test`; override for a quick run, e.g. make test GOTEST_FLAGS=-short
GOTEST_FLAGS ?= -race -shuffle=on -timeout 20m

# Install locations; DESTDIR prefixes all of them (packaging).
DESTDIR     ?=
BINDIR      ?= /usr/local/bin
UNITDIR     ?= /etc/systemd/system
CONFDIR     ?= /etc/inboxd

.DEFAULT_GOAL := build
.PHONY: build run test fuzz bench lint install clean

build:
	$(GO) build -trimpath -ldflags "$(LDFLAGS)" -o $(BINARY) .

# No configuration: embedded stores under ./data, with the built-in demo.
run: build
	./$(BINARY) serve --demo

# Installs missing Debian packages first (as root), then runs every test with
# the real servers required: a missing server fails instead of skipping; then
# every fuzz target briefly (FUZZTIME_TEST each: a count of inputs, so that
# a loaded machine takes longer rather than meeting go.dev/issue/75804).
FUZZTIME_TEST ?= 2000x
test:
	scripts/test-deps.sh
	@out=$$(mktemp -d); echo "go test -v $(GOTEST_FLAGS) ./... (output in $$out/test.log)"; \
	( INBOXD_REQUIRE_SERVICES=1 $(GO) test -v $(GOTEST_FLAGS) ./... 2>&1; echo $$? >"$$out/rc" ) | tee "$$out/test.log"; \
	rc=$$(cat "$$out/rc"); scripts/check-secrets.sh "$$out/test.log" || rc=1; \
	if [ "$$rc" = 0 ]; then rm -rf "$$out"; else echo "kept $$out/test.log"; fi; exit $$rc
	GO=$(GO) FUZZTIME=$(FUZZTIME_TEST) scripts/fuzz.sh

# Every fuzz target for longer, e.g. make fuzz FUZZTIME=10m. A failing input
# lands in PKG/testdata/fuzz/NAME/: commit it with the fix.
FUZZTIME ?= 60s
fuzz:
	GO=$(GO) FUZZTIME=$(FUZZTIME) scripts/fuzz.sh

bench:
	$(GO) test -run '^$$' -bench . -benchmem ./...

# The soak (as root, with dovecot-imapd installed): the real daemon with
# SOAK_TENANTS tenants for SOAK_DURATION, under mail, workflow runs, plugin
# calls, a plugin kill every minute and an IMAP cut every 30 s; it fails on a
# lost or duplicated mail, a leak or an unexplained error line. More flags in
# SOAK_FLAGS, e.g. make soak SOAK_DURATION=2m SOAK_TENANTS=100
# SOAK_FLAGS=-keep. See contrib/soak/README.md.
SOAK_DURATION ?= 10m
SOAK_TENANTS  ?= 500
SOAK_FLAGS    ?=
.PHONY: soak
soak: build
	$(GO) run ./contrib/soak -inboxd $(BINARY) -tenants $(SOAK_TENANTS) -duration $(SOAK_DURATION) $(SOAK_FLAGS)

lint:
	$(GO) vet ./...
	@unformatted="$$(gofmt -l .)"; \
	if [ -n "$$unformatted" ]; then \
		echo "gofmt: these files are not formatted (run gofmt -w):"; echo "$$unformatted"; exit 1; \
	fi

# Never overwrites a configuration: the examples are always refreshed, the
# real files are created from them only when absent. The TOML file is read by
# the service's dynamic user (world-readable, no secrets in it); the env file by
# systemd as root (0600: secrets go there).
install: build
	install -D -m 0755 $(BINARY) $(DESTDIR)$(BINDIR)/inboxd
	install -D -m 0644 systemd/inboxd.service $(DESTDIR)$(UNITDIR)/inboxd.service
	install -D -m 0644 contrib/examples/inboxd.toml $(DESTDIR)$(CONFDIR)/inboxd.toml.example
	install -D -m 0600 systemd/inboxd.env.example $(DESTDIR)$(CONFDIR)/inboxd.env.example
	@if [ -e $(DESTDIR)$(CONFDIR)/inboxd.toml ]; then \
		echo "kept existing $(DESTDIR)$(CONFDIR)/inboxd.toml"; \
	else install -m 0644 contrib/examples/inboxd.toml $(DESTDIR)$(CONFDIR)/inboxd.toml; fi
	@if [ -e $(DESTDIR)$(CONFDIR)/inboxd.env ]; then \
		echo "kept existing $(DESTDIR)$(CONFDIR)/inboxd.env"; \
	else install -m 0600 systemd/inboxd.env.example $(DESTDIR)$(CONFDIR)/inboxd.env; fi
	@echo "installed; now: systemctl daemon-reload && systemctl enable --now inboxd"

clean:
	rm -rf bin/
	rm -f coverage.out coverage.html *.coverprofile
