#!/usr/bin/env bash
# Starts a standalone Dovecot tuned for load, for `inboxd bench poll --imap-addr`:
# shared imap processes (many connections each) instead of one process per
# connection, limits raised for 1,000+ users with a pooled and an IDLE
# connection each, N users u0..u{N-1} with password "pw" (plain text LOGIN,
# ssl = no), Maildir under DIR. See ../shared/TEST-SERVICES.md, "Dovecot under
# load", for why each setting is there.
#
# Usage: scripts/bench-dovecot.sh N PORT DIR   start; prints the master's PID on stdout
#        scripts/bench-dovecot.sh stop DIR     stop the instance started in DIR
#
# Environment: BENCH_USER_PREFIX (default u), BENCH_PASSWORD (default pw).
# Needs root (mail processes run as the dovecot user) and dovecot-imapd.
# Notes and warnings go to stderr; Dovecot's own output to DIR/dovecot.out
# and DIR/dovecot.log (never a pipe: the daemon would hold it open).
set -euo pipefail

log() { printf 'bench-dovecot: %s\n' "$*" >&2; }
die() {
	log "$*"
	exit 1
}

stop() {
	local dir=$1 pidfile pid
	pidfile="$dir/run/master.pid"
	[[ -f $pidfile ]] || die "no $pidfile: nothing to stop"
	pid=$(<"$pidfile")
	if ! kill -0 "$pid" 2>/dev/null; then
		log "master $pid is not running"
		rm -f "$pidfile"
		return 0
	fi
	kill -TERM "$pid"
	for _ in $(seq 1 100); do
		kill -0 "$pid" 2>/dev/null || {
			log "stopped master $pid"
			return 0
		}
		sleep 0.1
	done
	log "master $pid did not stop in 10 s: SIGKILL"
	kill -KILL "$pid" 2>/dev/null || true
}

if [[ ${1:-} == stop ]]; then
	[[ $# -eq 2 ]] || die "usage: $0 stop DIR"
	stop "$2"
	exit 0
fi

[[ $# -eq 3 ]] || die "usage: $0 N PORT DIR | $0 stop DIR"
n=$1 port=$2 dir=$3
[[ $n =~ ^[0-9]+$ && $n -ge 1 ]] || die "N must be a positive number, got $n"
[[ $port =~ ^[0-9]+$ && $port -ge 1 && $port -le 65535 ]] || die "PORT must be 1-65535, got $port"
((EUID == 0)) || die "needs root (Dovecot's mail processes run as the dovecot user)"
bin=$(command -v dovecot || echo /usr/sbin/dovecot)
[[ -x $bin ]] || die "dovecot not found: apt-get install -y dovecot-imapd"
id dovecot >/dev/null 2>&1 || die "no dovecot user: is dovecot-imapd installed?"
prefix=${BENCH_USER_PREFIX:-u}
password=${BENCH_PASSWORD:-pw}

mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
if [[ -f $dir/run/master.pid ]] && kill -0 "$(<"$dir/run/master.pid")" 2>/dev/null; then
	die "a Dovecot already runs from $dir (PID $(<"$dir/run/master.pid")): $0 stop $dir"
fi
mkdir -p "$dir/run" "$dir/state" "$dir/mail"
chmod 755 "$dir" "$dir/state" "$dir/mail"
chown dovecot:dovecot "$dir/mail"
# The mail processes (uid dovecot) must reach the mail root through every parent.
if ! runuser -u dovecot -- test -x "$dir/mail" 2>/dev/null; then
	die "the dovecot user cannot reach $dir/mail (a parent directory is not world-searchable): use a DIR under /tmp or /var/tmp"
fi

# File descriptors: 1,000 users with a pooled and an IDLE connection each are
# 2,000+ connections, each an fd in imap-login, imap and the client.
hard=$(ulimit -Hn)
if [[ $hard == unlimited ]] || ((hard >= 65536)); then
	ulimit -n 65536
else
	ulimit -n "$hard"
fi
log "ulimit -n $(ulimit -n) (a client on this machine needs as much: ulimit -n in its shell too)"

# IDLE: Dovecot watches each idled mailbox with inotify. Every imap process
# runs as the dovecot user, and the kernel allows max_user_instances inotify
# instances per uid (128 by default); past it Dovecot logs "Inotify instance
# limit ... exceeded, disabling" and IDLE silently degrades to 30 s polling.
inotify() { # name minimum
	local f=/proc/sys/fs/inotify/$1 cur
	cur=$(<"$f")
	if ((cur >= $2)); then
		log "fs.inotify.$1 = $cur (enough)"
	elif sysctl -q -w "fs.inotify.$1=$2" >/dev/null 2>&1 || { echo "$2" >"$f"; } 2>/dev/null; then
		log "fs.inotify.$1 raised from $cur to $(<"$f")"
	else
		log "WARNING: fs.inotify.$1 = $cur and not writable here: with many IDLE users Dovecot falls back to 30 s polling"
	fi
}
inotify max_user_instances 8192
inotify max_user_watches 524288

passwd=$dir/passwd
: >"$passwd.tmp"
for ((i = 0; i < n; i++)); do
	printf '%s%d:{PLAIN}%s\n' "$prefix" "$i" "$password"
done >"$passwd.tmp"
mv "$passwd.tmp" "$passwd"
chmod 644 "$passwd"

instance="inboxd-bench-$port"
conf=$dir/dovecot.conf
# Connection budget: N users x (pool 2 + IDLE 1 + delivery 1) from 127.0.0.1.
conns=$((n * 4 + 100))
imap_procs=$((conns / 50 + 10))
cat >"$conf" <<EOF
# written by scripts/bench-dovecot.sh: a Dovecot tuned for load tests
instance_name = $instance
login_greeting = Dovecot ready ($instance).
base_dir = $dir/run
state_dir = $dir/state
log_path = $dir/dovecot.log
protocols = imap
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
first_valid_uid = 1
first_valid_gid = 1
mail_location = maildir:~/Maildir

# Otherwise the stats service (and anvil, auth ...) drop connections past
# 1,000 and everything slows down about 5x.
default_client_limit = 10000
default_process_limit = 1000
default_vsz_limit = 1G

passdb {
  driver = passwd-file
  args = scheme=PLAIN username_format=%u $passwd
}
userdb {
  driver = static
  args = uid=dovecot gid=dovecot home=$dir/mail/%u
}

# Shared processes: each imap process serves up to 50 connections and lives
# on (service_count = 0), instead of a fork (~5 ms) per login.
service imap {
  client_limit = 50
  service_count = 0
  process_limit = $imap_procs
  process_min_avail = 2
}
service imap-login {
  inet_listener imap {
    address = 127.0.0.1
    port = $port
  }
  inet_listener imaps {
    port = 0
  }
  service_count = 0
  client_limit = 4000
  process_min_avail = 2
}

protocol imap {
  # per user and IP: the poller's pooled connections, its IDLE connection
  # and the bench's delivering connection all come from 127.0.0.1
  mail_max_userip_connections = 20
}

# no per-IP auth penalty after failed logins from 127.0.0.1
service anvil {
  unix_listener anvil-auth-penalty {
    mode = 0
  }
}

namespace inbox {
  inbox = yes
  separator = /
}
EOF

"$bin" -c "$conf" >"$dir/dovecot.out" 2>&1 </dev/null || {
	cat "$dir/dovecot.out" >&2
	die "dovecot did not start"
}
# Wait for this instance's greeting.
for _ in $(seq 1 200); do
	if exec 3<>"/dev/tcp/127.0.0.1/$port" 2>/dev/null; then
		line=""
		IFS= read -r -t 2 line <&3 || true
		exec 3>&-
		if [[ $line == *"$instance"* ]]; then
			[[ -f $dir/run/master.pid ]] || die "greeted, but no $dir/run/master.pid"
			log "$n users ${prefix}0..${prefix}$((n - 1)) (password $password) on 127.0.0.1:$port; log $dir/dovecot.log; stop with: $0 stop $dir"
			cat "$dir/run/master.pid"
			exit 0
		fi
		[[ -z $line ]] || die "another server answers on port $port: $line"
	fi
	sleep 0.1
done
tail -n 20 "$dir/dovecot.out" "$dir/dovecot.log" >&2 2>/dev/null || true
die "no IMAP greeting on 127.0.0.1:$port after 20 s"
