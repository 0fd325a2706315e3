"""The data converter's payload side: pydantic models as JSON, with one TypeAdapter per type for the
whole process.

temporalio's pydantic converter caches a TypeAdapter per type hint, but the cache lives on the
converter instance, and the SDK builds a new payload converter for every workflow it runs: each
order rebuilt the adapters of its input and of every local-activity result (about 4 % of the
worker's CPU at load, in pydantic's schema building). Here every instance shares one JSON
converter, so an adapter is built once per type. The wire format is the SDK's own (json/plain),
so histories, the replayer and other clients read the payloads as before.
"""
from __future__ import annotations

from temporalio.contrib.pydantic import PydanticJSONPlainPayloadConverter
from temporalio.converter import CompositePayloadConverter, DataConverter, DefaultPayloadConverter, JSONPlainPayloadConverter

_SHARED_JSON = PydanticJSONPlainPayloadConverter()  # thread-safe: an lru_cache of immutable adapters


class SharedPydanticPayloadConverter(CompositePayloadConverter):
    """The SDK's default encodings with pydantic JSON in place of plain JSON, adapters shared."""

    def __init__(self) -> None:
        super().__init__(*(
            _SHARED_JSON if isinstance(converter, JSONPlainPayloadConverter) else converter
            for converter in DefaultPayloadConverter.default_encoding_payload_converters
        ))


shared_pydantic_data_converter = DataConverter(payload_converter_class=SharedPydanticPayloadConverter)
