"""Export the Python rules of a report to JSON for the web form (run at build time).

The form validates every field before it signs, with the very rules the nodes enforce: the
limits, patterns, ranges and taxonomy below are read from the Python modules that enforce them
(:mod:`bus.model`, :mod:`bus.report_file`, :mod:`bus.verify`, :mod:`bus.attachment`,
:mod:`bus.trust`, :mod:`bus.sealed`, :mod:`bus.receipt`, :mod:`nodes.observer.device`),
never written a second time by hand. The form's code knows only the kinds of rule (a range, a
length in characters, a pattern, a member of a list); every number, pattern and name comes from
this file's output.

Each bound is a named constant of the module whose checks use it (``bus.model``'s
``Location``, ``Attachment`` and ``Report``, ``bus.report_file``'s casualty counts,
``nodes.observer.device``'s request version), so a change there changes the form at the next
build; ``tests/integration/test_observer_web_rules.py`` runs the form's validation and the
Python rules on the boundary values of each and fails when the two disagree.

Usage: ``python nodes/observer_web/export_rules.py OUT.json`` (``make web`` runs it); the
output is deterministic (sorted keys), so an unchanged rule set leaves the file unchanged.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from bus import model, report_file, sealed
from bus.attachment import MAX_ATTACHMENT_BYTES
from bus.crypto import SIGNATURE_BYTES
from bus.model import Category, Role
from bus.receipt import HEAD_PAYLOAD_TYPE
from bus.verify import DEFAULT_MAX_CLOCK_SKEW_MS, DEFAULT_MAX_RECORD_BYTES
from nodes.observer.device import REQUEST_PAYLOAD_TYPE, REQUEST_TYPE, REQUEST_VERSION


def _pattern(regex: Any) -> str:
    """A Python regex source usable by JavaScript (only the common subset is used here)."""
    source: str = regex.pattern
    return source


def rules() -> dict[str, Any]:
    """Every rule the form applies, keyed as the form reads them."""
    return {
        "payload_types": {
            "report": model.PAYLOAD_REPORT,
            "sealed_report": model.PAYLOAD_SEALED_REPORT,
            "receipt": model.PAYLOAD_RECEIPT,
            "mandate": model.PAYLOAD_MANDATE,
            "accreditation": model.PAYLOAD_ACCREDITATION,
            "encryption_key": model.PAYLOAD_ENCRYPTION_KEY,
        },
        "accreditation_request": {
            "type": REQUEST_TYPE,
            "version": REQUEST_VERSION,
            "payload_type": REQUEST_PAYLOAD_TYPE,
            "role": Role.OBSERVER.name.lower(),
        },
        # GET /v1/observers/{id}/head: the node key signs pae(this type, the head's JSON).
        "observer_head": {"payload_type": HEAD_PAYLOAD_TYPE},
        # Role numbers as they are on the wire (trust.proto).
        "roles": {r.name.lower(): int(r) for r in Role},
        "patterns": {
            "id": _pattern(model._ID_RE),
            "uuid7": _pattern(model._UUID7_RE),
            "media_type": _pattern(report_file._MEDIA_TYPE_RE),
        },
        # bus.trust.check_subject_namespace: an observer id starts with "<org>-".
        "subject_namespace_separator": model.SUBJECT_NAMESPACE_SEPARATOR,
        "categories": [{"label": c.label, "value": int(c)} for c in Category],
        "limits": {
            "severity": [model.MIN_SEVERITY, model.MAX_SEVERITY],
            "confidence": [model.MIN_CONFIDENCE, model.MAX_CONFIDENCE],
            "lat": [-model.MAX_LAT, model.MAX_LAT],
            "lon": [-model.MAX_LON, model.MAX_LON],
            "precision_m": [0, model.MAX_PRECISION_M],
            "casualties": [0, report_file.MAX_CASUALTIES],
            "place_chars": model.MAX_PLACE_CHARS,
            "sub_type_chars": model.MAX_SUB_TYPE_CHARS,
            "narrative_chars": model.MAX_NARRATIVE_CHARS,
            "attachments": model.MAX_ATTACHMENTS,
            "attachment_bytes": MAX_ATTACHMENT_BYTES,
            "attachment_name_chars": model.MAX_ATTACHMENT_NAME_CHARS,
            "media_type_chars": model.MAX_MEDIA_TYPE_CHARS,
            "max_future_ms": report_file.MAX_FUTURE_MS,
            "max_clock_skew_ms": DEFAULT_MAX_CLOCK_SKEW_MS,
            "max_record_bytes": DEFAULT_MAX_RECORD_BYTES,
            "max_recipients": model.MAX_RECIPIENTS,
            "signature_bytes": SIGNATURE_BYTES,
        },
        "sealed": {
            "hpke_info": sealed.HPKE_INFO.decode(),
            "pad_marker": sealed.PAD_MARKER,
            "smallest_bucket": sealed.SMALLEST_BUCKET,
            "largest_power_of_two_bucket": sealed.LARGEST_POWER_OF_TWO_BUCKET,
            "content_key_bytes": sealed.CONTENT_KEY_BYTES,
            "nonce_bytes": model.GCM_NONCE_BYTES,
            "context_prefix": sealed.content_aad("", "", "", 0).decode().split("|")[0],
        },
    }


def main(argv: list[str]) -> int:
    """Write the rules to argv[1]; rewrite only when they changed (keeps make's stamps)."""
    if len(argv) != 2:
        print("usage: export_rules.py OUT.json", file=sys.stderr)
        return 2
    out = Path(argv[1])
    text = json.dumps(rules(), indent=1, sort_keys=True) + "\n"
    if not out.is_file() or out.read_text() != text:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
