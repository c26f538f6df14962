# memtrack capture script: POSIX sh, for targets without Python (phones over adb, boards
# over ssh). Needs sh, cat, ls, readlink; uses stat for the fdstat/mapstat sidecars, and
# tar + mkdir + ln + rm with a writable directory for the tar format. No root needed;
# as root it sees every process and the map_files sizes of map-only buffers.
#
#   sh capture.sh [-f auto|tar|stream] [-p PID,PID...] [--smaps] [-t TMPDIR] > capture
#
# Writes the memtrack capture layout (proc/<pid>/{comm,cmdline,status,maps,fd/<n>,
# fdinfo/<n>,fdstat,mapstat,ns/mnt,mountinfo}, proc/<pid>/task/<tid>/{fd/<n>,fdinfo/<n>,
# fdstat,maps,mapstat} for threads with fd tables of their own (cap_threads),
# proc/sysvipc/shm, sys/kernel/..., meta.json) to stdout:
# - tar: staged in TMPDIR, then one uncompressed tar stream;
# - stream: nothing written on the target. A first line `memtrack-stream 1 <B>`, then
#   records, each `\n<B> <T> <path>\n<body>`, the body running up to the next `\n<B> `.
#   <B> is a fresh random boundary per run (the kernel's uuid), so no captured byte can
#   end a body early. T: D dir, F file, L symlink (body = target), X drop file <path>
#   (its read failed half way), Z drop the tree <path> (the process went away), E end.
#   The tar is followed by a line `memtrack-tar-end N` for the same purpose as E.
# Only fds that look like buffers (memfd, dma-buf, /dev/shm, ashmem, /dev/zero, DRM)
# are readlink'ed and get their fdinfo read: one `ls -l` per process finds them.
LC_ALL=C
export LC_ALL
umask 077
set -f
nl='
'
me=memtrack-capture
die() { echo "$me: $*" >&2; exit 2; }

fmt=auto only= smaps=0 tmp=${TMPDIR:-}
while [ $# -gt 0 ]; do
  case $1 in
    -f|-p|-t) [ $# -ge 2 ] || die "$1 needs a value"
              case $1 in -f) fmt=$2;; -p) only=$2;; -t) tmp=$2;; esac; shift;;
    --smaps) smaps=1;;
    *) die "unknown argument: $1";;
  esac
  shift
done
case $fmt in auto|tar|stream) ;; *) die "-f must be auto, tar or stream";; esac
case $only in *[!0-9,\ ]*) die "-p takes a comma-separated list of pids";; esac
[ -r /proc/self/status ] || die "/proc is not mounted"

have() { command -v "$1" >/dev/null 2>&1; }
for c in cat ls readlink; do have $c || die "$c not found: the capture needs sh, cat, ls and readlink"; done
# Never echo data: dash's echo rewrites backslashes. mksh (Android's sh) has print.
if [ -n "${KSH_VERSION:-}" ]; then put() { print -rn -- "$1"; }; else put() { printf %s "$1"; }; fi

uid=
while read -r k v rest; do
  case $k in Uid:) uid=$v; break;; esac
done < /proc/self/status
case $uid in ''|*[!0-9]*) uid=;; esac

statok=0
if have stat && stat -L -c '%d %D %i %s %f' /proc/self >/dev/null 2>&1; then statok=1; fi
# the block count (allocated bytes) where this stat has it; "- -" (unknown) where not
statfmt="%n %d %D %i %s %f - -"
if [ $statok = 1 ] && stat -L -c '%b %B' /proc/self >/dev/null 2>&1; then statfmt="%n %d %D %i %s %f %b %B"; fi

stage=
cleanup() { [ -n "$stage" ] && rm -rf "$stage" "$stage.err"; }
if [ "$fmt" != stream ]; then
  if have tar && have mkdir && have ln && have rm; then
    for dir in "$tmp" /data/local/tmp /tmp "${HOME:-}"; do
      [ -n "$dir" ] && [ -d "$dir" ] && [ -w "$dir" ] || continue
      if mkdir "$dir/$me.$$" 2>/dev/null; then stage=$dir/$me.$$; break; fi
    done
  fi
  if [ -n "$stage" ]; then
    fmt=tar
    trap cleanup EXIT
    trap 'exit 1' INT TERM HUP
  elif [ "$fmt" = tar ]; then
    die "tar format needs tar, mkdir, ln, rm and a writable directory (-t DIR)"
  else
    fmt=stream
  fi
fi

if [ "$fmt" = tar ]; then
  cd "$stage" || die "cannot enter $stage"
  # relative paths from here on: ours never hold spaces, TMPDIR may
  f_dir() { mkdir -p "$@"; }
  f_file() { cat "$2" > "$1" 2>/dev/null || { rm -f "$1"; return 1; }; }
  f_data() { put "$2" > "$1"; }
  f_link() { ln -s -- "$2" "$1" 2>/dev/null; }
  f_drop() { rm -rf "$1"; }
else
  B=$(cat /proc/sys/kernel/random/uuid 2>/dev/null)
  case $B in *[!0-9a-f-]*) B=;; esac
  if [ -z "$B" ]; then              # no uuid (an LSM may hide it): what the shell has
    up=; read -r up rest < /proc/uptime 2>/dev/null
    B=$$-${RANDOM:-0}-${RANDOM:-0}-${RANDOM:-0}-$up
    case $B in *[!0-9.-]*) B=$$;; esac
  fi
  B=--mt-$B
  put "memtrack-stream 1 $B$nl"
  f_dir() { for _d do put "$nl$B D $_d$nl"; done; }
  f_file() { put "$nl$B F $1$nl"; cat "$2" 2>/dev/null || { put "$nl$B X $1$nl"; return 1; }; }
  f_data() { put "$nl$B F $1$nl$2"; }
  f_link() { put "$nl$B L $1$nl$2"; }
  f_drop() { put "$nl$B Z $1$nl"; }
fi

# Numbers without printf (mksh has none built in); results in R.
tohex() {
  _n=$1 _h=
  while [ "$_n" -gt 0 ]; do
    case $((_n & 15)) in 10) _c=a;; 11) _c=b;; 12) _c=c;; 13) _c=d;; 14) _c=e;; 15) _c=f;; *) _c=$((_n & 15));; esac
    _h=$_c$_h _n=$((_n >> 4))
  done
  R=${_h:-0}
}
tooct() {
  _n=$1 _h=
  while [ "$_n" -gt 0 ]; do _h=$((_n & 7))$_h _n=$((_n >> 3)); done
  R=${_h:-0}
}
# st_dev as "MM:mm" hex from stat's %d (decimal) and %D (hex) of the same value. They are
# checked against each other (a stat that swapped them still decodes), and decoded with
# glibc's dev_t layout using 32-bit arithmetic only (mksh), which covers majors < 4096.
devfmt() {
  case $1 in ''|*[!0-9]*) return 1;; esac
  case $2 in ''|*[!0-9a-fA-F]*) return 1;; esac
  [ ${#1} -le 10 ] && [ ${#2} -le 8 ] || return 1
  if [ $((0x$2)) = "$1" ]; then _v=$1
  elif [ $((0x$1)) = "$2" ]; then _v=$2
  else return 1
  fi
  tohex $(((_v >> 8) & 4095)); _maj=$R
  tohex $(((_v & 255) | ((_v >> 12) & 1048320))); R=$_maj:$R
}
nozeros() { _z=$1; while [ ${#_z} -gt 1 ]; do case $_z in 0*) _z=${_z#0};; *) break;; esac; done; R=$_z; }
# `stat -L -c '%n %d %D %i %s %f %b %B'` lines -> sidecar lines `key dev ino size
# mode(octal) blocks`, key = the last path component (fd number, or start-end for
# map_files). blocks is st_blocks (%b, in units of %B: 512 on Linux); left out where %B
# says another unit or %b is no number, so the reader knows it unknown rather than guess.
statlines() {
  S=
  _o=$IFS; IFS=$nl; set -- $1; IFS=$_o
  for _l do
    set -- $_l
    [ $# -eq 8 ] || continue
    case $4$5 in *[!0-9]*) continue;; esac
    case $6 in *[!0-9a-fA-F]*) continue;; esac
    devfmt "$2" "$3" || continue
    _dev=$R
    _blk=
    case $7 in ''|*[!0-9]*) ;; *) [ "$8" = 512 ] && _blk=" $7";; esac
    tooct $((0x$6))
    S="$S${1##*/} $_dev $4 $5 $R$_blk$nl"
  done
}

denied= vanished= unreadable= nproc=0
plainchars='A-Za-z0-9._:/@+=,() -'     # a bracket expression; - last is literal
root=0
[ "$uid" = 0 ] && root=1

# /dev/shm's device: its bind mounts elsewhere show in mountinfo as this major:minor
# (decimal, shmkey); meta.json says it as fdstat does (hex, shmdev)
shmkey= shmdev=
if [ $statok = 1 ]; then
  set -- $(stat -L -c '%d %D' /dev/shm 2>/dev/null)
  if [ $# -eq 2 ] && devfmt "$1" "$2"; then
    shmdev=$R
    shmkey=$(((_v >> 8) & 4095)):$(((_v & 255) | ((_v >> 12) & 1048320)))
  fi
fi

# A process's mount namespace (proc/PID/ns/mnt) and, for the first process of each, the
# mountinfo lines of /dev/shm's filesystem and of hugetlbfs (proc/PID/mountinfo): the
# mounts under which a file is a buffer though its path does not say so. pts: their mount
# points, each with a trailing /, but /dev/shm itself (points of odd characters are left
# out: the scan still reads the capture's mountinfo, the script only decides what to
# record from them).
nsseen=$nl
myns=$(readlink /proc/self/ns/mnt 2>/dev/null)
cap_mounts() {
  pts=
  # most processes share the script's namespace: test -ef (a builtin) says so unforked
  if [ -n "$myns" ] && [ "$d/ns/mnt" -ef /proc/self/ns/mnt ] 2>/dev/null; then ns=$myns
  else ns=$(readlink "$d/ns/mnt" 2>/dev/null) || return 0
  fi
  case $ns in 'mnt:['*']') ;; *) return 0;; esac
  _n=${ns#mnt:?}; _n=${_n%?}
  case $_n in ''|*[!0-9]*) return 0;; esac
  f_dir "$p/ns"
  f_link "$p/ns/mnt" "mnt:[$_n]"
  case $nsseen in
    *"$nl$_n$nl"*) eval "pts=\$pts_$_n"; return 0;;
  esac
  nsseen="$nsseen$_n$nl"
  mi=$(cat "$d/mountinfo" 2>/dev/null) || return 0
  _k=
  _o=$IFS; IFS=$nl; set -- $mi; IFS=$_o
  for line do
    set -- $line
    case $line in
      *" - hugetlbfs "*) ;;
      *) [ -n "$shmkey" ] && [ "$3" = "$shmkey" ] || continue;;
    esac
    _k="$_k$line$nl"
    [ "$5" = /dev/shm ] && [ "$4" = / ] && continue
    case $5 in *[!$plainchars]*|*' '*) continue;; esac
    pts="$pts ${5%/}/"
  done
  f_data "$p/mountinfo" "$_k"
  eval "pts_$_n=\$pts"
}

# 0 if the path $1 lies under one of pts
underpts() {
  for _pt in $pts; do
    case $1 in "$_pt"*) return 0;; esac
  done
  return 1
}

# The buffer fds of the fd table of $1 (/proc/PID or /proc/TID), given its `ls -l fd` in
# $3, recorded under $2: their links, fdinfo where needed, and the fdstat sidecar.
cap_fds() {
  _src=$1 _dst=$2
  f_dir "$_dst/fd" "$_dst/fdinfo"
  # One `ls -l` names every fd's target. Its text is trusted for targets of plain
  # characters when every line is an entry (a target holding a newline splits a line);
  # the others are read again with readlink. A shell has no arrays: t_<fd> variables.
  bfds= plain=1
  _o=$IFS; IFS=$nl; set -- $3; IFS=$_o
  for line do
    case $line in l*" -> "*) ;; total*) continue;; *) plain=0; continue;; esac
    left=${line%% -> *} tgt=${line#* -> }
    fd=${left##* }
    case $fd in ''|*[!0-9]*) continue;; esac
    case $tgt in
      /memfd:*|/dmabuf*|/dev/shm/*|/dev/ashmem*|"/dev/zero (deleted)"|anon_inode:dmabuf|/dev/dri/*) ;;
      /*) underpts "$tgt" || continue;;
      *) continue;;
    esac
    bfds="$bfds $fd"
    case $tgt in *[!$plainchars]*) eval "t_$fd=";; *) eval "t_$fd=\$tgt";; esac
  done
  sts=
  for fd in $bfds; do
    t=
    [ $plain = 1 ] && eval "t=\$t_$fd"
    if [ -z "$t" ]; then
      t=$(readlink "$_src/fd/$fd" 2>/dev/null) || continue
      [ -n "$t" ] || continue
    fi
    f_link "$_dst/fd/$fd" "$t"
    # fdinfo: where the scan needs it (dma-buf exporter/name/count, DRM clients, ashmem),
    # or where no stat gives memfd/shm (and files under their mounts) their identity
    case $t in
      /dmabuf*|anon_inode:*|/dev/ashmem*|/dev/dri/*) f_file "$_dst/fdinfo/$fd" "$_src/fdinfo/$fd";;
      *) [ $statok = 1 ] || f_file "$_dst/fdinfo/$fd" "$_src/fdinfo/$fd";;
    esac
    sts="$sts $_src/fd/$fd"
  done
  if [ -n "$sts" ] && [ $statok = 1 ]; then
    statlines "$(stat -L -c "$statfmt" $sts 2>/dev/null)"
    [ -n "$S" ] && f_data "$_dst/fdstat" "$S"
  fi
}

# The maps of $1 (/proc/PID or /proc/TID) recorded under $2, as root with the mapstat
# sidecar of its buffer mappings (shared ones, private ones of buffer files, shared ones
# under pts), and smaps with --smaps. Returns 1 where a read failed; mapsempty=1 where
# maps was empty (an exited leader).
cap_maps() {
  _src=$1 _dst=$2 mapsempty=0
  if [ $root = 1 ] || [ $smaps = 1 ]; then
    # parse maps here: which buffer mappings to stat through map_files, and smaps
    m=$(cat "$_src/maps" 2>/dev/null) || return 1
    [ -n "$m" ] || mapsempty=1
    f_data "$_dst/maps" "$m${m:+$nl}"
    mf= nbm=0
    _o=$IFS; IFS=$nl; set -- $m; IFS=$_o
    for line do
      case $line in */*) path=/${line#*/};; *) continue;; esac
      perms=${line#* }; perms=${perms%% *}
      case $perms in
        ???s)
          case $path in
            /memfd:*|/dmabuf:*|/dev/shm/*|/SYSV*|"/dev/zero (deleted)"|"/anon_hugepage (deleted)"|/dev/ashmem*) ;;
            *) underpts "$path" || continue;;
          esac;;
        ???p)
          case $path in /memfd:*|/dmabuf:*|/dev/shm/*|/dev/ashmem*) ;; *) continue;; esac;;
        *) continue;;
      esac
      nbm=1
      r=${line%% *}
      nozeros "${r%-*}"; a=$R
      nozeros "${r#*-}"
      mf="$mf $_src/map_files/$a-$R"
    done
    if [ -n "$mf" ] && [ $root = 1 ] && [ $statok = 1 ]; then
      statlines "$(stat -L -c "$statfmt" $mf 2>/dev/null)"
      [ -n "$S" ] && f_data "$_dst/mapstat" "$S"
    fi
    if [ $smaps = 1 ] && [ $nbm = 1 ]; then
      f_file "$_dst/smaps" "$_src/smaps" || return 1
    fi
  else
    f_file "$_dst/maps" "$_src/maps" || return 1
    read -r _x < "$_src/maps" 2>/dev/null || mapsempty=1
  fi
  return 0
}

# "fd -> target" lines of an `ls -l fd` text: what tells two fd tables apart
fdpairs() {
  R=
  _o=$IFS; IFS=$nl; set -- $1; IFS=$_o
  for _l do
    case $_l in l*" -> "*) _f=${_l%% -> *}; R="$R${_f##* } -> ${_l#* -> }$nl";; esac
  done
}

# Threads whose fd table is not the leader's: a thread that unshared CLONE_FILES, or
# every thread once the leader has exited (its table is then none). Without kcmp the
# script tells tables apart by their fd numbers (a glob, no process started), then by
# `ls -l` (fd and target) where those differ: a thread with its own table holding the
# leader's fds under the leader's numbers is taken as the leader's. Each distinct table
# is recorded once, under proc/PID/task/TID as the process's (fd/, fdinfo/, fdstat), and
# the first one's maps too where the leader's maps are empty.
cap_threads() {
  set +f
  set -- $d/task/*
  set -f
  [ $# -gt 1 ] || return 0
  _tids=
  for _t do _t=${_t##*/}; [ "$_t" = "$pid" ] || _tids="$_tids $_t"; done
  set +f
  _lead=$(for _x in $d/fd/*; do put "${_x##*/} "; done)
  set -f
  fdpairs "$lst"; _seen="--$nl$R--$nl"
  _needmaps=$mapsempty
  for tid in $_tids; do
    case $tid in ''|*[!0-9]*) continue;; esac
    set +f
    _names=$(for _x in /proc/$tid/fd/*; do put "${_x##*/} "; done)
    set -f
    [ "$_names" = "$_lead" ] && continue
    tl=$(ls -l "/proc/$tid/fd" 2>/dev/null) || continue
    fdpairs "$tl"
    case $_seen in *"--$nl$R--$nl"*) continue;; esac
    _seen="$_seen$R--$nl"
    cap_fds "/proc/$tid" "$p/task/$tid" "$tl"
    if [ $_needmaps = 1 ]; then
      cap_maps "/proc/$tid" "$p/task/$tid" && _needmaps=0
    fi
  done
}

cap_proc() {
  pid=$1 d=/proc/$1 p=proc/$1
  lst=$(ls -l "$d/fd" 2>/dev/null)
  if [ -z "$lst" ] && ! ls "$d/fd" >/dev/null 2>&1; then
    if [ ! -d "$d" ]; then vanished="$vanished $pid"
    elif [ -r "$d/fd" ]; then unreadable="$unreadable $pid"
    else denied="$denied $pid"
    fi
    return
  fi
  cap_mounts
  cap_fds "$d" "$p" "$lst"
  cap_maps "$d" "$p" || { gone "$pid"; return; }
  cap_threads
  f_file "$p/status" "$d/status" || { gone "$pid"; return; }
  f_file "$p/cmdline" "$d/cmdline" || { gone "$pid"; return; }
  f_file "$p/comm" "$d/comm"
  cap_cgroup
  nproc=$((nproc + 1))
}

# /proc/PID/cgroup, and which memory cgroup it names (the v1 memory controller's line,
# else the v2 0:: line) into cgs, "v1 PATH" or "v2 PATH" a line; paths of other
# characters than these (systemd's \x2d escapes, spaces) or with .. are not followed.
cgs=
cap_cgroup() {
  cg=$(cat "$d/cgroup" 2>/dev/null) || return 0
  [ -n "$cg" ] || return 0
  f_data "$p/cgroup" "$cg$nl"
  _m= _v=
  _o=$IFS; IFS=$nl; set -- $cg; IFS=$_o
  for line do
    _r=${line#*:}; _c=${_r%%:*}; _pth=${_r#*:}
    case ,$_c, in *,memory,*) _m="v1 $_pth";; esac
    case $line in 0::/*) _v="v2 $_pth";; esac
  done
  [ -n "$_m" ] || _m=$_v
  case ${_m#v? } in *[!A-Za-z0-9._:/@+=,-]*|*/../*|*/..|'') ;; *) cgs="$cgs$_m$nl";; esac
}

# memory.stat (and dmem.current, dmem.max on v2) of each cgroup seen, once
cap_cgroup_files() {
  _seen=$nl
  _o=$IFS; IFS=$nl; set -- $cgs; IFS=$_o
  for e do
    case $_seen in *"$nl$e$nl"*) continue;; esac
    _seen="$_seen$e$nl"
    _pth=${e#* }
    if [ "${e%% *}" = v1 ]; then _dir=sys/fs/cgroup/memory$_pth; else _dir=sys/fs/cgroup$_pth; fi
    _dir=${_dir%/}
    [ -r "/$_dir/memory.stat" ] || continue
    f_dir "$_dir"
    f_file "$_dir/memory.stat" "/$_dir/memory.stat" || :
    if [ "${e%% *}" = v2 ] && [ -r "/$_dir/dmem.current" ]; then
      f_file "$_dir/dmem.current" "/$_dir/dmem.current" || :
      f_file "$_dir/dmem.max" "/$_dir/dmem.max" || :
    fi
  done
}

# A process whose read failed half way is dropped whole, as the Python scanner does.
gone() {
  f_drop "proc/$1"
  if [ ! -d "/proc/$1" ]; then vanished="$vanished $1"
  elif [ -r "/proc/$1/maps" ]; then unreadable="$unreadable $1"
  else denied="$denied $1"
  fi
}

taken=$(date -u +%Y-%m-%dT%H:%M:%SZ 2>/dev/null)
case $taken in *[!0-9TZ:-]*) taken=;; esac

f_dir proc proc/sys/kernel proc/sysvipc
f_file proc/sys/kernel/hostname /proc/sys/kernel/hostname
f_file proc/sys/kernel/osrelease /proc/sys/kernel/osrelease
f_file proc/sysvipc/shm /proc/sysvipc/shm
if [ -r /sys/kernel/debug/dma_buf/bufinfo ]; then
  f_dir sys/kernel/debug/dma_buf
  f_file sys/kernel/debug/dma_buf/bufinfo /sys/kernel/debug/dma_buf/bufinfo || :
fi
if [ ! -r /sys/kernel/debug/dma_buf/bufinfo ] && [ -d /sys/kernel/dmabuf/buffers ]; then
  dl=
  for n in $(ls /sys/kernel/dmabuf/buffers 2>/dev/null); do
    case $n in *[!0-9]*) continue;; esac
    dl="$dl sys/kernel/dmabuf/buffers/$n"
  done
  f_dir sys/kernel/dmabuf/buffers $dl
  for n in $dl; do
    f_file "$n/size" "/$n/size" || :
    f_file "$n/exporter_name" "/$n/exporter_name" || :
  done
fi

if [ -n "$only" ]; then
  pids=$(IFS=', '; for x in $only; do echo "$x"; done)
  scope=pids
else
  pids=$(ls /proc)
  scope=all
fi
for pid in $pids; do
  case $pid in ''|*[!0-9]*) continue;; esac
  cap_proc "$pid"
done
cap_cgroup_files

jlist() { _j=; for _x in $1; do _j="$_j${_j:+, }$_x"; done; R="[$_j]"; }
meta="{\"tool\": \"$me.sh\", \"script_version\": 1, \"format\": \"$fmt\""
[ -n "$taken" ] && meta="$meta, \"taken_at\": \"$taken\""
[ -n "$uid" ] && meta="$meta, \"uid\": $uid"
meta="$meta, \"scope\": \"$scope\""
if [ $scope = pids ]; then jlist "$pids"; meta="$meta, \"pids\": $R"; fi
[ -n "$shmdev" ] && meta="$meta, \"shm_dev\": \"$shmdev\""
meta="$meta, \"processes\": $nproc, \"stat\": $([ $statok = 1 ] && echo true || echo false)"
jlist "$denied"; meta="$meta, \"skipped\": {\"denied\": $R"
jlist "$vanished"; meta="$meta, \"vanished\": $R"
jlist "$unreadable"; meta="$meta, \"unreadable\": $R}}"
f_data meta.json "$meta$nl"

if [ "$fmt" = tar ]; then
  tar -cf - . 2>"$stage.err" || { cat "$stage.err" >&2; die "tar failed"; }
  # after the tar's end blocks (tar readers stop there): proof that nothing was cut off
  put "${nl}memtrack-tar-end $nproc$nl"
else
  put "$nl$B E $nproc$nl"
fi
