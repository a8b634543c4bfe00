"""``bench export``: the store's finished runs as the leaderboard's records (JSON lines)."""

from __future__ import annotations

import argparse


def cmd_export(args: argparse.Namespace) -> int:
    """Export the store's runs into the records folder. Without --replace a record already there (same
    run id) is kept byte for byte, even when the store's version differs; --replace makes the folder
    exactly the store's export (same run ids take the store's version, the others are dropped). Files
    whose bytes would not change are not written; a run that cannot be a record is refused by id."""
    from petlbench.leaderboard.records import export_store

    done = export_store(args.store, args.out, include_failed=args.include_failed, replace=args.replace)
    kept = f"kept {done.kept} already in {args.out}"
    if done.kept_differing:
        kept += f" ({done.kept_differing} of them differ from the store; --replace to overwrite them)"
    dropped = f", dropped {done.dropped} not in the store" if args.replace else ""
    wrote = ", ".join(map(str, done.files)) or "nothing (no file changed)"
    removed = f"; removed {', '.join(map(str, done.removed))}" if done.removed else ""
    print(
        f"exported from {args.store}: added {done.added}, {kept}, replaced {done.replaced}{dropped}; "
        f"wrote {wrote}{removed}"
    )
    return 0
