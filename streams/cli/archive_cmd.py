"""`frwatch archive --dir DIR`: checks, then the archiver (streams.archiver)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

from streams.archive import ArchiveError
from streams.archive_writer import ArchiveConfig, ArchiveWriter
from streams.cli.acls import archive_group
from streams.kafkaio import KafkaAccessError, check_group, check_login, check_topics
from streams.settings import Settings

EXIT_USAGE = 2


def _fail(message: str) -> int:
    print(f"frwatch archive: error: {message}", file=sys.stderr)
    return EXIT_USAGE


def archive_config(args: argparse.Namespace, settings: Settings) -> ArchiveConfig:
    """The validated options (raises ValueError with the flag named)."""
    if args.keep_days is not None and args.keep_days < 1:
        raise ValueError("--keep-days must be >= 1")
    if args.max_file_bytes < 1024:
        raise ValueError("--max-file-bytes must be >= 1024")
    if not 0 < args.max_file_seconds <= 3600:
        raise ValueError("--max-file-seconds must be > 0 and <= 3600")
    return ArchiveConfig(
        root=Path(args.dir).absolute(),
        topic=settings.topic_requests,
        keep_days=args.keep_days,
        max_file_bytes=args.max_file_bytes,
        max_file_seconds=args.max_file_seconds,
    )


def run_archive(args: argparse.Namespace, settings: Settings) -> int:
    """Exit 0 after a clean stop (SIGTERM/SIGINT), 2 for bad usage or an unusable cluster."""
    from streams.archiver import MetricsAddressError, run_archiver

    try:
        config = archive_config(args, settings)
    except ValueError as exc:
        return _fail(str(exc))
    try:  # a directory that cannot be the archive: said before connecting
        ArchiveWriter(config).prepare()
    except ArchiveError as exc:
        return _fail(str(exc))

    async def checks() -> None:
        logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
        await check_login(settings)
        await check_topics(settings, [settings.topic_requests])
        await check_group(settings, archive_group(settings))

    try:
        asyncio.run(checks())
    except KafkaAccessError as exc:
        return _fail(str(exc))
    try:
        run_archiver(settings, config)
    except (ArchiveError, MetricsAddressError) as exc:
        return _fail(str(exc))
    except OSError as exc:  # the disk failed under it: nothing past the last file committed
        print(f"frwatch archive: stopped: {exc}", file=sys.stderr)
        return 1
    return 0
