# chatd — `make` builds bin/chatd; `make asan` the ASan/UBSan build;
# `make test` runs the whole suite (tests/run).
CC ?= cc
LLHTTP_SRC ?= /usr/share/llhttp
LLHTTP_INC ?= /usr/share/include/llhttp
PKGS := libuv hiredis libcjson libjwt openssl libmongoc-1.0
DEPS_CFLAGS := $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
DEPS_LIBS := $(shell pkg-config --libs $(PKGS) 2>/dev/null) -lwslay -lunistring -lz -lm

WARN := -Wall -Wextra -Werror -Wshadow -Wno-unused-parameter
CFLAGS_COMMON := -std=gnu11 $(WARN) -I$(LLHTTP_INC) $(DEPS_CFLAGS) -D_GNU_SOURCE
CFLAGS ?= -O2 -g
ASAN_FLAGS := -O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=undefined

# The worker is built from its wings: net (transport), chat (protocol),
# data (Redis, MongoDB), wired together by worker/worker.c.
WINGS := net chat data
SRC := $(wildcard common/*.c) $(wildcard proto/*.c) \
       $(foreach w,$(WINGS),$(wildcard worker/$(w)/*.c)) $(wildcard worker/*.c) $(wildcard master/*.c)
HDR := $(wildcard */*.h) $(wildcard worker/*/*.h)
LIB_SRC := $(filter-out master/%,$(SRC))
LLHTTP_C := $(wildcard $(LLHTTP_SRC)/*.c)

OBJ := $(SRC:%.c=build/rel/%.o)
ASAN_OBJ := $(SRC:%.c=build/asan/%.o)
LLHTTP_OBJ := $(notdir $(LLHTTP_C:.c=.o))
LLHTTP_REL := $(LLHTTP_OBJ:%=build/rel/llhttp/%)
LLHTTP_ASAN := $(LLHTTP_OBJ:%=build/asan/llhttp/%)

UNIT_SRC := $(wildcard tests/unit/test_*.c)
UNIT_BIN := $(UNIT_SRC:tests/unit/%.c=build/tests/%)

# Installation (make install; the Debian package uses PREFIX=/usr
# SYSCONFDIR=/etc). DESTDIR stages everything under another root.
PREFIX ?= /usr/local
SBINDIR ?= $(PREFIX)/sbin
BINDIR ?= $(PREFIX)/bin
DATADIR ?= $(PREFIX)/share
MANDIR ?= $(DATADIR)/man
SYSCONFDIR ?= $(PREFIX)/etc
UNITDIR ?= $(PREFIX)/lib/systemd/system
INSTALL ?= install

.PHONY: all asan unit test clean run bench install
all: bin/chatd bin/chat-load

# The load generator (scripts/chat-load.c): a client, not part of chatd.
bin/chat-load: scripts/chat-load.c
	@mkdir -p bin
	$(CC) $(CFLAGS) -std=gnu11 $(WARN) $(DEPS_CFLAGS) -o $@ $< $(DEPS_LIBS)

bin/chatd: $(OBJ) $(LLHTTP_REL)
	@mkdir -p bin
	$(CC) $(CFLAGS) -o $@ $^ $(DEPS_LIBS)

asan: bin/chatd-asan
bin/chatd-asan: $(ASAN_OBJ) $(LLHTTP_ASAN)
	@mkdir -p bin
	$(CC) $(ASAN_FLAGS) -o $@ $^ $(DEPS_LIBS)

build/rel/%.o: %.c $(HDR)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(CFLAGS_COMMON) -c -o $@ $<

build/asan/%.o: %.c $(HDR)
	@mkdir -p $(dir $@)
	$(CC) $(ASAN_FLAGS) $(CFLAGS_COMMON) -c -o $@ $<

# llhttp is generated code from Debian's node-llhttp; it is not ours to
# hold to -Werror.
build/rel/llhttp/%.o: $(LLHTTP_SRC)/%.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -w -I$(LLHTTP_INC) -c -o $@ $<

build/asan/llhttp/%.o: $(LLHTTP_SRC)/%.c
	@mkdir -p $(dir $@)
	$(CC) $(ASAN_FLAGS) -w -I$(LLHTTP_INC) -c -o $@ $<

# Unit tests link the modules (not the master) under ASan/UBSan.
unit: $(UNIT_BIN)
build/tests/%: tests/unit/%.c $(filter-out build/asan/master/%,$(ASAN_OBJ)) $(LLHTTP_ASAN)
	@mkdir -p $(dir $@)
	$(CC) $(ASAN_FLAGS) $(CFLAGS_COMMON) -o $@ $^ $(DEPS_LIBS)

test:
	bash tests/run

run: bin/chatd
	bash scripts/run

bench: all
	bash scripts/bench

# The binary, chatctl, the browser client, man pages, an example config,
# the systemd unit and the logrotate snippet.
install: bin/chatd
	$(INSTALL) -d $(DESTDIR)$(SBINDIR) $(DESTDIR)$(BINDIR) $(DESTDIR)$(DATADIR)/chatd/web \
		$(DESTDIR)$(MANDIR)/man8 $(DESTDIR)$(SYSCONFDIR)/chatd $(DESTDIR)$(SYSCONFDIR)/logrotate.d \
		$(DESTDIR)$(UNITDIR)
	$(INSTALL) -m 755 bin/chatd $(DESTDIR)$(SBINDIR)/chatd
	$(INSTALL) -m 755 scripts/chatctl $(DESTDIR)$(BINDIR)/chatctl
	$(INSTALL) -m 644 $(wildcard $(addprefix worker/web/*.,html js css svg png ico json)) \
		$(DESTDIR)$(DATADIR)/chatd/web
	$(INSTALL) -m 644 scripts/man/chatd.8 scripts/man/chatctl.8 $(DESTDIR)$(MANDIR)/man8
	$(INSTALL) -m 644 scripts/chatd.conf $(DESTDIR)$(SYSCONFDIR)/chatd/chatd.conf
	$(INSTALL) -m 644 scripts/chatd.logrotate $(DESTDIR)$(SYSCONFDIR)/logrotate.d/chatd
	sed -e 's|@SBINDIR@|$(SBINDIR)|g' -e 's|@SYSCONFDIR@|$(SYSCONFDIR)|g' scripts/chatd.service \
		> $(DESTDIR)$(UNITDIR)/chatd.service
	chmod 644 $(DESTDIR)$(UNITDIR)/chatd.service

clean:
	rm -rf build bin
