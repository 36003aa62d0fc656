# Licensed under the Apache License, Version 2.0 (the "License"); you may
# not use this file except in compliance with the License. You may obtain
# a copy of the License at
#
#      http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS, WITHOUT
# WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied. See the
# License for the specific language governing permissions and limitations
# under the License.
"""``glance-imgplugins inspect FILE``: what the import plugins see in a file.

Prints the detected format, sizes, the safety verdict with each failed check,
the facts, and the properties introspection would set: the same
``inspection.inspect_file`` result the plugins act on.  With --signature and
--certificate it also verifies a signature over the file's bytes offline,
as format_conversion does at import; --trusted-certificate adds the
certificate validation of signature_certificate_validation.  Exit status:
0 safe (and the signature verified, when asked), 8 unsafe or signature
refused (refused at import), 7 unreadable input (missing, not a regular
file, changed while read), 2 usage.

The arguments (:func:`add_arguments`) and the work (:func:`collect`) are
defined here once.  Two front ends use them: the cliff command
(``glance_imgplugins.osc.commands.InspectImage``), which is what
``glance-imgplugins inspect`` and ``openstack image inspect`` run, and this
module's ``register``/``run``, the argparse fallback used when the ``[cli]``
extra (cliff, osc-lib) is not installed.
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import json
import logging
import re
import sys
from typing import Any

from glance_imgplugins import exception, inspection
from glance_imgplugins.cmd import status as st

EXIT_SAFE, EXIT_UNSAFE, EXIT_UNREADABLE = st.OK, st.UNSAFE, st.UNREADABLE


def inspect(path: str, vmdk_allowed_types: list[str] | None = None
            ) -> inspection.InspectionResult:
    """``inspection.inspect_file`` with unreadable input as one error."""
    # format_inspector logs every failed check; the verdict says it.
    logging.getLogger('oslo_utils.imageutils').setLevel(logging.CRITICAL)
    allowed = vmdk_allowed_types or inspection.DEFAULT_VMDK_ALLOWED_TYPES
    try:
        return inspection.inspect_file(path, vmdk_allowed_types=allowed)
    except exception.InspectionInputError as err:
        raise exception.UnreadableInput(
            str(err), path=path, reason=str(err)) from err
    except OSError as err:
        raise exception.UnreadableInput(
            path=path, reason=err.strerror or 'cannot be read') from err


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``inspect`` arguments, for both front ends (not ``-f``: cliff
    has its own formatters, the fallback adds ``table``/``json``)."""
    parser.add_argument('file', metavar='FILE',
                        help='Image file to inspect.')
    parser.add_argument(
        '--vmdk-allowed-type', dest='vmdk_allowed_types',
        action='append', metavar='TYPE',
        help="Allowed vmdk createType (repeatable; default: %s, as "
             "Glance's [image_format] vmdk_allowed_types)."
             % ', '.join(inspection.DEFAULT_VMDK_ALLOWED_TYPES))
    parser.add_argument(
        '--guest', action='store_true',
        help='Also inspect the guest OS with libguestfs (read-only '
             'appliance; about 25 s without KVM) and show the '
             'properties guest inspection would set.')
    signed = parser.add_argument_group(
        'signature', 'Verify a signature over FILE offline, as the '
        'import\ndoes with the img_signature* properties.')
    signed.add_argument(
        '--signature', metavar='SIG',
        help='The img_signature value (base64), or @PATH of a file holding '
             'it (base64 or the raw signature bytes). Needs --certificate.')
    signed.add_argument(
        '--certificate', metavar='PEMFILE',
        help='The signing certificate (PEM, as stored in the key manager '
             'for img_signature_certificate_uuid).')
    signed.add_argument(
        '--hash-method', default='SHA-256', metavar='METHOD',
        help='img_signature_hash_method (default SHA-256; supported: %s).'
             % ', '.join(_signature().supported_hash_methods()))
    signed.add_argument(
        '--key-type', default='RSA-PSS', metavar='TYPE',
        help='img_signature_key_type (default RSA-PSS; also DSA and '
             'ECC_* curves).')
    signed.add_argument(
        '--mask-gen-algorithm', default='MGF1',
        choices=_signature().MASK_GEN_ALGORITHMS,
        help='Mask generation function of RSA-PSS (default MGF1, the only '
             'one Glance and Nova use).')
    signed.add_argument(
        '--trusted-certificate', dest='trusted_certificates',
        action='append', metavar='PEMFILE',
        help='A trusted CA certificate (repeatable): the signing '
             'certificate must also be within its validity dates and chain '
             'to one of them, as with [format_conversion] '
             'signature_certificate_validation.')
    parser.set_defaults(inspect_parser=parser)


def _signature() -> Any:
    # Imported when inspect's parser is built, not with this module:
    # cursive and castellan are heavy and no other command needs them.
    from glance_imgplugins import signature
    return signature


@dataclasses.dataclass
class Report:
    """What ``inspect`` found: the header inspection, every field as
    shown (``data``), and the exit status."""

    result: inspection.InspectionResult
    data: dict[str, Any]
    status: int


def collect(args: argparse.Namespace) -> Report:
    """Run what ``args`` asks for.  Raises ``UnreadableInput`` (exit
    status 7) when FILE cannot be read as an image file."""
    result = inspect(args.file, args.vmdk_allowed_types)
    data: dict[str, Any] = result.to_dict()
    status = EXIT_SAFE if result.safe else EXIT_UNSAFE
    if args.signature or args.certificate or args.trusted_certificates:
        verified = verify_signature(args)
        data['signature'] = verified[0]
        data['signature_verified'] = verified[1]
        if not verified[1]:
            status = EXIT_UNSAFE
    if args.guest:
        from glance_imgplugins import guest

        data['guest'] = guest.inspect_file(
            args.file, vmdk_allowed_types=args.vmdk_allowed_types)
    return Report(result=result, data=data, status=status)


def _read(path: str) -> bytes:
    try:
        with open(path, 'rb') as src:
            return src.read()
    except OSError as err:
        raise exception.UnreadableInput(
            path=path, reason=err.strerror or 'cannot be read') from err


def _signature_value(value: str) -> str:
    """--signature: base64 text, or @PATH holding base64 or raw bytes."""
    if not value.startswith('@'):
        return value
    data = _read(value[1:])
    text = data.strip()
    if text and re.fullmatch(rb'[A-Za-z0-9+/=\s]+', text):
        return text.decode('ascii')
    return base64.b64encode(data).decode('ascii')


def verify_signature(args: argparse.Namespace) -> tuple[str, bool]:
    """``--signature``: (what to show, verified).  A refusal reads as at
    import; unreadable FILE or certificate files raise UnreadableInput."""
    if not (args.signature and args.certificate):
        args.inspect_parser.error(
            '--signature and --certificate go together (and '
            '--trusted-certificate needs both)')
    sig_mod = _signature()
    # cursive logs each trusted certificate it skips; the answer says it.
    logging.getLogger('cursive.certificate_utils').setLevel(logging.CRITICAL)
    certificate = args.certificate
    sig = sig_mod.Signature(
        signature=_signature_value(args.signature),
        hash_method=args.hash_method, key_type=args.key_type,
        certificate_uuid=certificate)
    try:
        cert = sig_mod.load_certificate(_read(certificate), certificate)
        trusted = None
        if args.trusted_certificates:
            trusted = [(path, sig_mod.load_certificate(_read(path), path))
                       for path in args.trusted_certificates]
        verified = sig_mod.verify_file_with(args.file, sig, cert, trusted)
    except exception.SignatureRefused as err:
        return str(err), False
    except OSError as err:
        raise exception.UnreadableInput(
            path=args.file, reason=err.strerror or 'cannot be read') from err
    return 'verified (%s, %s, certificate %s, SHA-256 fingerprint %s%s)' % (
        sig.key_type, sig.hash_method, verified.subject, verified.fingerprint,
        ', within its dates and chained to a trusted certificate'
        if verified.trusted else ''), True


# --- the argparse fallback ------------------------------------------------

def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        'inspect', help='Inspect an image file: format, safety, properties.',
        description=__doc__.split('\n\n')[1],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    parser.add_argument('-f', '--format', dest='output',
                        choices=('table', 'json'),
                        default='table', help='output format (default: '
                        'table)')
    parser.set_defaults(func=run)


def _size(n: int) -> str:
    value = float(n)
    for unit in ('B', 'KiB', 'MiB', 'GiB'):
        if value < 1024:
            return '%d B' % n if unit == 'B' else '%.1f %s' % (value, unit)
        value /= 1024
    return '%.1f TiB' % value


def _guest_rows(found: dict[str, Any]) -> list[tuple[str, str]]:
    if 'error' in found:
        return [('guest', str(found['error']))]
    rows = [('guest', str(found.get('guest', '')))]
    rows += [('guest property', '%s = %s' % item)
             for item in sorted(found.get('properties', {}).items())]
    rows += [('guest warning', str(w)) for w in found.get('warnings', [])]
    return rows


def _table(report: Report) -> str:
    result = report.result
    rows = [
        ('file', result.path),
        ('format', result.format if result.format == result.inspector_name
         else '%s (detected as %s)' % (result.format,
                                      result.inspector_name)),
        ('virtual size', '%d (%s)' % (result.virtual_size,
                                       _size(result.virtual_size))),
        ('file size', '%d (%s)' % (result.file_size, _size(result.file_size))),
        ('allocated', '%d (%s)' % (result.allocated_size,
                                    _size(result.allocated_size))),
        ('verdict', 'safe' if result.safe else 'UNSAFE: refused at import'),
    ]
    rows += [('failure', '%s: %s' % item)
             for item in sorted(result.failures.items())]
    rows += [('fact', '%s = %s' % (k, v))
             for k, v in sorted(result.facts.items())]
    rows += [('property', '%s = %s  [%s]' % (
        k, v, result.property_families.get(k, '')))
        for k, v in sorted(result.properties.items())]
    if 'signature' in report.data:
        rows.append(('signature', report.data['signature']))
    if 'guest' in report.data:
        rows += _guest_rows(report.data['guest'])
    width = max(len(k) for k, _ in rows)
    return '\n'.join('%-*s  %s' % (width, k, v) for k, v in rows)


def run(args: argparse.Namespace) -> int:
    try:
        report = collect(args)
    except exception.UnreadableInput as err:
        if args.output == 'json':
            print(json.dumps({'path': args.file, 'error': str(err)}))
        print('glance-imgplugins inspect: error: %s' % err, file=sys.stderr)
        return EXIT_UNREADABLE
    if args.output == 'json':
        print(json.dumps(report.data, indent=2, sort_keys=True))
    else:
        print(_table(report))
    return report.status
