"""The OpenAI-style image request fields (SPEC §2.1), from a JSON object, a multipart form or a
url-encoded form, into the canonical EditRequest. OpenAI's dialect reads them, and so does every
dialect whose body follows OpenAI's (the envelope dialect, seed 003's service)."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from starlette.datastructures import FormData, UploadFile
from starlette.requests import Request

from imagegate.config import Limits
from imagegate.core.request import Background, Delivery, EditRequest, ImageRef, OutputFormat, Quality
from imagegate.errors import BadRequest, excerpt
from imagegate.wire.fields import as_bool, as_enum, as_int, as_str, json_object, ref_from_json, ref_from_text
from imagegate.wire.forms import read_multipart

_IMAGE_FIELD = re.compile(r"^image(\[\d*\])?$")
_NESTED = re.compile(r"^(\w+)\[(\w+)\]$")
_SCALARS = {
    "prompt",
    "model",
    "n",
    "size",
    "quality",
    "background",
    "output_format",
    "output_compression",
    "response_format",
    "stream",
    "partial_images",
    "callback_url",
    "user",
}


def apply_fields(req: EditRequest, values: dict[str, Any]) -> None:
    """Set the scalar fields named in `values` (wire spellings) on `req`; BadRequest names a bad one."""
    for name, value in values.items():
        if value is None:
            continue
        if name == "prompt":
            req.prompt = as_str(value, name)
        elif name == "model":
            req.model = as_str(value, name).strip()
        elif name == "n":
            req.n = as_int(value, name)
        elif name == "size":
            req.size = as_str(value, name).strip().lower() or "auto"
        elif name == "quality":
            req.quality = as_enum(Quality, value, name)
        elif name == "background":
            req.background = as_enum(Background, value, name)
        elif name == "output_format":
            text = as_str(value, name).strip().lower()
            req.output_format = as_enum(OutputFormat, "jpeg" if text == "jpg" else text, name)
        elif name == "output_compression":
            req.output_compression = as_int(value, name)
        elif name == "response_format":
            delivery = as_str(value, name).strip().lower()
            if delivery not in ("url", "b64_json"):
                raise BadRequest(
                    f"Invalid value for 'response_format': '{delivery}'. Supported values are: 'url', 'b64_json'.",
                    param="response_format",
                )
            req.delivery = Delivery(delivery)
        elif name == "stream":
            req.stream = as_bool(value, name)
        elif name == "partial_images":
            req.partial_images = as_int(value, name)
        elif name == "callback_url":
            req.callback_url = as_str(value, name)
        elif name == "user":
            req.user = as_str(value, name)


def _reject_aspect_ratio(values: dict[str, Any]) -> None:
    if "aspect_ratio" in values:
        raise BadRequest(
            "Unknown parameter 'aspect_ratio': this API sets shape and resolution through 'size' "
            "(for example 1536x1024 or auto).",
            param="size",
        )


BasicOnly = Callable[[str], bool]
"""Whether a model id honours only model, prompt and image (its other fields are ignored unparsed)."""


def _apply_scalars(req: EditRequest, scalars: dict[str, Any], basic_only: BasicOnly) -> None:
    model = scalars.get("model")
    if isinstance(model, str) and basic_only(model.strip()):
        # seed 003: its async callback works for these models like for any other
        scalars = {k: v for k, v in scalars.items() if k in ("model", "prompt", "callback_url")}
    apply_fields(req, scalars)


def _from_form(form: FormData, basic_only: BasicOnly) -> EditRequest:
    req = EditRequest(prompt="")
    scalars: dict[str, Any] = {}
    for name, value in form.multi_items():
        if _IMAGE_FIELD.match(name):
            param = f"image[{len(req.images)}]"
            req.images.append(_form_ref(value, param))
        elif name == "mask":
            req.mask = _form_ref(value, "mask")
        elif isinstance(value, UploadFile):
            req.extra[name] = f"<file {value.filename}>"
        elif name in _SCALARS:
            scalars[name] = value
        elif nested := _NESTED.match(name):
            group = req.extra.setdefault(nested.group(1), {})
            if not isinstance(group, dict):
                raise _both_ways(nested.group(1), name)
            group[nested.group(2)] = value
        elif isinstance(req.extra.get(name), dict):
            raise _both_ways(name, name)
        else:
            req.extra[name] = value
    _reject_aspect_ratio(req.extra)
    _apply_scalars(req, scalars, basic_only)
    return req


def _both_ways(name: str, sent: str) -> BadRequest:
    return BadRequest(
        f"The form sends '{excerpt(name)}' both as one value and as a group ('{excerpt(name)}[...]'); send one.",
        param=excerpt(sent),
    )


def _form_ref(value: UploadFile | str, param: str) -> ImageRef:
    if isinstance(value, UploadFile):
        return ImageRef(param=param, upload=value.file, filename=value.filename)
    return ref_from_text(value, param)


def request_from_json(body: dict[str, Any], basic_only: BasicOnly) -> EditRequest:
    """The canonical request from an OpenAI-style JSON object (also used by the envelope dialect)."""
    _reject_aspect_ratio(body)
    req = EditRequest(prompt="")
    image = body.get("image")
    items: list[Any] = image if isinstance(image, list) else ([] if image is None else [image])
    images = body.get("images")
    if images is not None:
        if not isinstance(images, list):
            raise BadRequest("Invalid 'images': expected an array.", param="images")
        items += images
    req.images = [ref_from_json(item, f"image[{index}]") for index, item in enumerate(items)]
    if body.get("mask") is not None:
        req.mask = ref_from_json(body["mask"], "mask")
    _apply_scalars(req, {k: v for k, v in body.items() if k in _SCALARS}, basic_only)
    req.extra = {k: v for k, v in body.items() if k not in _SCALARS and k not in ("image", "images", "mask")}
    return req


async def parse_request(request: Request, limits: Limits, basic_only: BasicOnly) -> EditRequest:
    """The canonical request from a multipart or JSON body. Raises BadRequest for malformed bodies."""
    content_type = request.headers.get("content-type", "").lower()
    if content_type.startswith("multipart/form-data"):
        return _from_form(await read_multipart(request, limits), basic_only)
    if content_type.startswith("application/x-www-form-urlencoded"):
        return _from_form(await request.form(max_fields=limits.max_form_fields), basic_only)
    body = json_object(await request.body(), hint=" Send JSON or multipart/form-data.")
    return request_from_json(body, basic_only)
