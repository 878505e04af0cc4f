#!/usr/bin/env bash
# Runs a command with jemalloc as its memory allocator where Debian's libjemalloc2 is installed (glibc's otherwise).
# The training worker runs under it (scripts/run.sh, and the browser tests' stack as run.sh starts it): on the
# default base model with the Thorough preset every stage peaked lower under jemalloc at about the same speed
# (README, "Memory"), and modelfactory.training.memory.release_freed hands jemalloc's freed pages back between
# stages as malloc_trim does glibc's. MF_JEMALLOC names another copy of the library; MF_JEMALLOC= (empty) turns it off.
jemalloc="${MF_JEMALLOC-/usr/lib/x86_64-linux-gnu/libjemalloc.so.2}"
if [ -n "$jemalloc" ] && [ -e "$jemalloc" ]; then
  export LD_PRELOAD="$jemalloc${LD_PRELOAD:+:$LD_PRELOAD}"
fi
exec "$@"
