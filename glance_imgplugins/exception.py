"""The package's one exception root and its message templates.

Every error carries a ``msg_fmt`` template filled from keyword arguments,
so the text a user reads is written in one place.  Plugins translate these
at the task edge into what Glance shows users (see
``glance_imgplugins.plugins.base``).
"""

from __future__ import annotations

from typing import Any


class GlanceImgPluginsError(Exception):
    """Root of every error this package raises on purpose."""

    msg_fmt = "An unknown error occurred"

    def __init__(self, message: str | None = None, **kwargs: Any) -> None:
        self.kwargs = kwargs
        if message is None:
            try:
                message = self.msg_fmt % kwargs
            except (KeyError, TypeError, ValueError):
                # A template bug must not hide the original failure.
                message = "%s (%r)" % (self.msg_fmt, kwargs)
        self.msg = message
        super().__init__(message)

    def __str__(self) -> str:
        return self.msg


# --- configuration --------------------------------------------------------

class ConfigError(GlanceImgPluginsError):
    msg_fmt = "Invalid configuration: %(reason)s"


class RulesError(ConfigError):
    msg_fmt = "Property injection rules %(path)s: %(reason)s"


# --- images refused (the user's input is at fault) -------------------------

class ImageRejected(GlanceImgPluginsError):
    """The image itself is refused; the text is meant for the image owner."""

    msg_fmt = "Image refused: %(reason)s"


class UnsafeImage(ImageRejected):
    msg_fmt = "%(format)s image failed safety check %(checks)s: refused"


class FormatMismatch(ImageRejected):
    msg_fmt = ("Image declared as disk_format %(declared)s but its content is "
               "%(detected)s: refused")


class UnknownFormat(ImageRejected):
    msg_fmt = "Image format could not be determined: %(reason)s: refused"


class FormatNotAllowed(ImageRejected):
    msg_fmt = ("Image format %(format)s is not allowed for import here "
               "(allowed: %(allowed)s): refused")


class VirtualSizeTooLarge(ImageRejected):
    msg_fmt = ("Image virtual size %(virtual_size)d bytes exceeds the "
               "limit of %(limit)d bytes: refused")


class ForbiddenProperty(ImageRejected):
    msg_fmt = "Property %(key)s may not be set by users here: refused"


# --- the machinery failed --------------------------------------------------

class InsufficientSpace(GlanceImgPluginsError):
    msg_fmt = ("Not enough space in %(path)s for the converted image: "
               "%(needed)d bytes needed, %(free)d free")


class QemuImgError(GlanceImgPluginsError):
    msg_fmt = "qemu-img %(action)s failed: %(reason)s"


class QemuImgTimeout(QemuImgError):
    msg_fmt = "qemu-img %(action)s did not finish within %(timeout)s seconds"


class ConversionFailed(GlanceImgPluginsError):
    msg_fmt = "Image conversion failed: %(reason)s"


class StoreError(GlanceImgPluginsError):
    msg_fmt = "Store %(store)s: %(reason)s"


# --- property injection ------------------------------------------------------

class ForbiddenPropertyByRule(ForbiddenProperty):
    msg_fmt = ("Property %(key)s may not be set by users here "
               "(property injection rule %(rule)s): refused")


class PropertyTemplateError(GlanceImgPluginsError):
    msg_fmt = ("Property injection rule %(rule)s: the value of %(key)s needs "
               "${%(var)s}, which this import does not have")


# --- multi-store import / copy CLI -----------------------------------------

class MultistoreError(GlanceImgPluginsError):
    """An import or copy could not be started or watched."""

    msg_fmt = "Multi-store import: %(reason)s"


class ApiConnectionError(MultistoreError):
    msg_fmt = "Cannot reach the Image API: %(reason)s"


class ImageApiError(MultistoreError):
    msg_fmt = "Image API refused to %(action)s: %(reason)s"


class UnknownStores(MultistoreError):
    msg_fmt = "Unknown store(s) %(stores)s (stores here: %(enabled)s)"


class ImageFileError(MultistoreError):
    msg_fmt = "Cannot read image file %(path)s: %(reason)s"
