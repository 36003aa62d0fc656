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

"""The package's one exception hierarchy: it *is* the failure contract.

Every error carries a ``msg_fmt`` template filled from keyword arguments,
so the text a user reads is written in one place.

What an import failure does to the image is decided by the branch its class
sits in, never by a side list of names:

* :class:`ContentRefused` -- the image's bytes or its declared format are at
  fault (including what qemu-img reports about the content).  Running the
  import again on the same bytes can only fail again: the image goes back to
  ``queued``, the staged data is removed (so a corrected file can be staged)
  and every requested store is listed in ``os_glance_failed_import``.
* :class:`Retryable` -- a limit the operator can raise, the configuration,
  staging space, qemu-img killed or timed out, a property the user can
  change.  The image goes to ``uploading`` with the staged data kept, so
  ``glance image-import --import-method glance-direct`` retries without a
  new upload; the stores are marked failed.

Anything else raised inside a plugin task is treated as :class:`Retryable`
(the staged data is never thrown away on an error we do not understand) and
reaches users as "<plugin> failed unexpectedly; see the Glance API log".

The plugins translate these at the task edge (``plugins/base.py``) into the
``UploadException`` whose text Glance shows; ``doc/source/failures.rst``
lists every class with its status, staged data and message.
"""

from __future__ import annotations

from typing import Any, ClassVar


class GlanceImgPluginsError(Exception):
    """Root of every error this package raises on purpose."""

    msg_fmt = "An unknown error occurred"

    def __init__(self, message: str | None = None, **kwargs: Any) -> None:
        self.kwargs = kwargs
        if message is None:
            try:
                message = self.msg_fmt % kwargs
            except (KeyError, TypeError, ValueError):
                # A template bug must not hide the original failure; the
                # template alone never carries a repr of the arguments.
                message = self.msg_fmt.split('%(')[0].rstrip(' :(') or \
                    type(self).msg_fmt
        self.msg = message
        super().__init__(message)

    def __str__(self) -> str:
        return self.msg


# --- the import failure contract --------------------------------------------

class ImportFailure(GlanceImgPluginsError):
    """A plugin refused an image or could not finish its import."""

    #: Status a glance-direct import's image is given on this failure.
    status: ClassVar[str] = 'uploading'
    #: Whether the staged data is kept for a retry.
    keep_staged: ClassVar[bool] = True


class ContentRefused(ImportFailure):
    """The image's bytes or declared format are refused: ``queued``, staged
    data removed."""

    status = 'queued'
    keep_staged = False
    msg_fmt = "Image refused: %(reason)s"


class Retryable(ImportFailure):
    """Retrying can help once something changes: ``uploading``, staged data
    kept."""

    status = 'uploading'
    keep_staged = True
    msg_fmt = "Import failed: %(reason)s"


# --- content refused --------------------------------------------------------

class UnsafeImage(ContentRefused):
    msg_fmt = "%(format)s image failed safety check %(checks)s: refused"


class FormatMismatch(ContentRefused):
    msg_fmt = ("Image declared as disk_format %(declared)s but its content is "
               "%(detected)s: refused")


class CompressedImage(FormatMismatch):
    msg_fmt = ("Image declared as disk_format %(declared)s is %(container)s "
               "compressed: refused (decompress it first, or ask the "
               "operator to enable the decompression plugin)")


class UnknownFormat(ContentRefused):
    msg_fmt = "Image format could not be determined: %(reason)s: refused"


class FormatNotAllowed(ContentRefused):
    msg_fmt = ("Image format %(format)s is not allowed for import here "
               "(allowed: %(allowed)s): refused")


class QemuImgRefused(ContentRefused):
    """qemu-img itself found the content unusable (a named check)."""

    msg_fmt = ("%(format)s image failed safety check %(check)s "
               "(qemu-img: %(reason)s): refused")


class ArchiveRefused(ContentRefused):
    """A compressed container that cannot be safely unpacked."""

    msg_fmt = "%(container)s archive refused: %(reason)s"


class SignatureRefused(ContentRefused):
    """A signed image whose signature cannot be verified as Glance would
    (``img_signature*`` properties): the same bytes can only fail again."""

    msg_fmt = "Image signature verification failed: %(reason)s: refused"


class SignatureMismatch(SignatureRefused):
    msg_fmt = ("Image signature verification failed: the signature does not "
               "match the image data (certificate %(certificate)s): refused")


class SignatureCertificateRefused(SignatureRefused):
    msg_fmt = ("Image signature verification failed: certificate "
               "%(certificate)s %(reason)s: refused")


class SignatureCertificateUntrusted(SignatureRefused):
    """Certificate validation is on (``[format_conversion]
    signature_certificate_validation``) and the signing certificate is
    outside its validity dates or does not chain to a trusted certificate
    authority."""

    msg_fmt = ("Image signature verification failed: certificate "
               "%(certificate)s is not trusted: %(reason)s: refused")


class SignatureAlgorithmUnsupported(SignatureRefused):
    msg_fmt = ("Image signature verification failed: %(property)s %(value)s "
               "is not supported (supported: %(supported)s): refused")


class SignedImageNeedsConversion(ContentRefused):
    """The operator refuses to convert signed images (Nova verifies
    signatures over the stored bytes, which must be what was signed)."""

    msg_fmt = ("Image is signed and would have to be converted from "
               "%(declared)s to %(target)s, which changes the bytes that "
               "were signed: refused (upload the image as %(target)s and "
               "sign that)")


# --- retryable: limits the operator can raise -------------------------------

class LimitExceeded(Retryable):
    msg_fmt = "%(what)s exceeds the limit %(limit)s: not imported"


class VirtualSizeTooLarge(LimitExceeded):
    msg_fmt = ("Image virtual size %(virtual_size)d bytes exceeds the "
               "limit of %(limit)d bytes (%(option)s): not imported")

    def __init__(self, message: str | None = None, **kwargs: Any) -> None:
        kwargs.setdefault('option', '[format_conversion] max_virtual_size')
        super().__init__(message, **kwargs)


class ConvertedSizeTooLarge(LimitExceeded):
    msg_fmt = ("The converted image would hold at least %(needed)d bytes of "
               "data, more than the limit of %(limit)d bytes (%(option)s): "
               "not imported")


class DecompressedSizeTooLarge(LimitExceeded):
    msg_fmt = ("The %(container)s data decompresses to more than %(limit)d "
               "bytes (%(bound)s): not imported")


class InsufficientSpace(Retryable):
    msg_fmt = ("Not enough space in the staging area for image %(image)s: "
               "at least %(needed)d bytes needed, %(free)d available after "
               "the reserve")


# --- retryable: the configuration -------------------------------------------

class ConfigError(Retryable):
    """``reason`` reads ``[group] option: what is wrong``."""

    msg_fmt = "Invalid configuration: %(reason)s"


class RulesError(ConfigError):
    msg_fmt = "Property injection rules %(path)s: %(reason)s"


class PropertyTemplateError(ConfigError):
    msg_fmt = ("Property injection rule %(rule)s: the value of %(key)s needs "
               "${%(var)s}, which this import does not have")


# --- retryable: the properties the user set ---------------------------------

class PropertiesRefused(Retryable):
    """The user's properties are refused; the data stays staged so the user
    can change them and import again."""

    msg_fmt = "Image properties refused: %(reason)s"


class ForbiddenProperty(PropertiesRefused):
    msg_fmt = "Property %(key)s may not be set by users here: refused"


class ForbiddenPropertyByRule(ForbiddenProperty):
    msg_fmt = ("Property %(key)s may not be set by users here "
               "(property injection rule %(rule)s): refused")


class KeyManagerUnavailable(Retryable):
    """The key manager holding the signing certificate did not answer; the
    staged data is kept so the same import can be retried."""

    msg_fmt = ("Import failed: the key manager could not be reached to "
               "verify the image signature (certificate %(certificate)s); "
               "try the import again later")


class SignatureCertificateForbidden(Retryable):
    """The key manager refused the importing user access to the signing
    certificate; access can be granted and the import retried."""

    msg_fmt = ("Import failed: the key manager refused access to the image "
               "signing certificate %(certificate)s for the importing user; "
               "give the image owner's project access to it and try the "
               "import again")


# --- retryable: the machinery -----------------------------------------------

class QemuImgError(Retryable):
    msg_fmt = "qemu-img %(action)s failed: %(reason)s"


class QemuImgTimeout(QemuImgError):
    msg_fmt = "qemu-img %(action)s did not finish within %(timeout)s seconds"


class ConversionFailed(Retryable):
    msg_fmt = "Image conversion failed: %(reason)s"


class StagingSpaceLow(ConversionFailed):
    msg_fmt = ("Image conversion stopped: the staging area's free space fell "
               "under the reserve of %(reserve)d bytes (%(option)s)")


# --- offline inspection input ---------------------------------------------

class InspectionInputError(GlanceImgPluginsError):
    """The file given to inspection cannot be inspected as an image."""

    msg_fmt = "Cannot inspect %(path)s: %(reason)s"


class NotRegularFile(InspectionInputError):
    msg_fmt = "Cannot inspect %(path)s: it is a %(kind)s, not a regular file"


class FileChanged(InspectionInputError):
    msg_fmt = "Cannot inspect %(path)s: it changed size while being read"


# --- the command line (multi-store import / copy / watch, OSC plugin) -------
#
# ``exit_status`` is what ``glance-imgplugins`` / ``openstack image ...``
# return for the error (glance_imgplugins.cmd.status lists them all).

class MultistoreError(GlanceImgPluginsError):
    """An import or copy could not be started or watched."""

    exit_status: ClassVar[int] = 1
    msg_fmt = "Multi-store import: %(reason)s"


class ApiConnectionError(MultistoreError):
    """The Image API (or Keystone) could not be reached; may be transient."""

    msg_fmt = "Cannot reach the Image API: %(reason)s"


class AuthenticationError(MultistoreError):
    msg_fmt = "Authentication failed: %(reason)s"


class ImageApiError(MultistoreError):
    """The Image API answered with an HTTP error status."""

    msg_fmt = "Image API refused to %(action)s: %(reason)s"

    @property
    def http_status(self) -> int | None:
        status = self.kwargs.get('status')
        return status if isinstance(status, int) else None


class ImageNotFound(MultistoreError):
    msg_fmt = "No image with name or ID %(image)s"


class AmbiguousImage(MultistoreError):
    msg_fmt = ("%(count)d images are named %(image)s: give the image ID "
               "instead")


class UnknownStores(MultistoreError):
    msg_fmt = "Unknown store(s) %(stores)s (stores here: %(enabled)s)"


class ImageFileError(MultistoreError):
    msg_fmt = "Cannot read image file %(path)s: %(reason)s"


class UnreadableInput(MultistoreError):
    """``inspect`` was given something it cannot read as an image file."""

    exit_status = 7
    msg_fmt = "Cannot read %(path)s: %(reason)s"


class CliExtraMissing(MultistoreError):
    msg_fmt = ("The %(command)s command needs the CLI libraries: install "
               "them with: pip install 'glance-imgplugins[cli]'")
