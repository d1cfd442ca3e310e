"""``cache info | verify | prune``: the shared embedding cache."""

from __future__ import annotations

import os

from wsseg_fast.cache import EmbeddingCache, default_cache_dir
from wsseg_fast.cli.common import UsageError, parse_size


def add_cache(sub) -> None:
    p = sub.add_parser("cache", help="the embedding cache: info, verify, prune")
    p.add_argument("action", choices=("info", "verify", "prune"))
    p.add_argument("--cache", default=None, help="cache directory (default: $WSSEG_FAST_CACHE or ~/.cache/wsseg_fast)")
    p.add_argument(
        "--max-size", type=parse_size, help="prune: remove least recently used entries down to this size (e.g. 2G)"
    )
    p.add_argument("--older-than", type=float, help="prune: remove entries not used for this many days")
    p.add_argument("--keep-corrupt", action="store_true", help="verify: report corrupt entries without removing them")
    p.set_defaults(func=run_cache)


def run_cache(args) -> int:
    root = args.cache or default_cache_dir()
    if not os.path.isdir(root):
        raise UsageError(f"no cache at {root}")
    cache = EmbeddingCache(root)
    if args.action == "info":
        info = cache.info()
        print(
            f"cache {info['root']}: {info['entries']} embeddings, {info['bytes'] / 2**20:.1f} MiB"
            + (f", {info['temporary_files']} temporary files" if info["temporary_files"] else "")
        )
        return 0
    if args.action == "verify":
        result = cache.verify(remove=not args.keep_corrupt)
        for bad in result["corrupt"]:
            print(f"corrupt: {bad['path']}: {bad['problem']}" + ("" if args.keep_corrupt else " (removed)"))
        print(f"{result['ok']} entries ok, {len(result['corrupt'])} corrupt")
        return 0 if not result["corrupt"] else 1
    if args.max_size is None and args.older_than is None:
        raise UsageError("prune needs --max-size and/or --older-than")
    result = cache.prune(
        max_bytes=args.max_size, older_than=None if args.older_than is None else args.older_than * 86400
    )
    print(
        f"removed {result['removed']} entries ({result['freed_bytes'] / 2**20:.1f} MiB); "
        f"{result['bytes'] / 2**20:.1f} MiB left"
    )
    return 0


def register(sub) -> None:
    add_cache(sub)
