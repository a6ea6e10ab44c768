"""What every section of the configuration is: strict (an unknown field is an error, so a typo fails at
``serve run``) and frozen."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
