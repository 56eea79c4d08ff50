"""config.evaluation: EvalSettings' defaults as a config section and back."""

import dataclasses
import json

import ml_collections
import pytest

from experiments.configs import default
from sosvae_jax.evaluation import classifier
from sosvae_jax.evaluation import settings


def test_section_round_trips_through_config_json():
  config = default.get_config()
  assert settings.from_config(config.evaluation) == settings.EvalSettings()
  saved = json.loads(config.to_json_best_effort())  # as workdir/config.json holds it
  assert settings.from_config(saved['evaluation']) == settings.EvalSettings()


def test_every_field_is_in_the_section_with_its_default():
  section = settings.default_config()
  for field in dataclasses.fields(settings.EvalSettings):
    assert field.name in section
  assert section.classifier.to_dict() == dataclasses.asdict(classifier.ClassifierSettings())


def test_overrides_reach_the_settings():
  section = settings.default_config()
  section.iwae_k = 50
  section.sampler = 'gmm'  # a None default that still takes a str
  section.classifier.num_steps = 7
  s = settings.from_config(section)
  assert (s.iwae_k, s.sampler, s.classifier.num_steps) == (50, 'gmm', 7)
  with pytest.raises(TypeError):
    section.sampler = 3


def test_missing_section_gives_defaults_and_unknown_field_fails():
  assert settings.from_config(None) == settings.EvalSettings()
  with pytest.raises(TypeError, match='iwae'):
    settings.from_config(ml_collections.ConfigDict({'iwae': 3}))
