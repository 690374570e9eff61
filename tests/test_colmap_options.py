"""imc.colmap_options: one lookup of pycolmap options by name, for setting and for defaults."""

import pycolmap
import pytest

from imc import colmap_options, config
from imc.errors import ImcError
from imc.stages import mapping


def test_a_mapper_option_is_found_for_setting_and_for_its_default():
    options = pycolmap.IncrementalPipelineOptions()
    colmap_options.set_option(options, "init_min_num_inliers", 42)
    assert options.mapper.init_min_num_inliers == 42
    assert colmap_options.option_default("init_min_num_inliers") == 100  # pycolmap's
    fresh = pycolmap.IncrementalPipelineOptions().mapper.init_min_num_inliers
    assert colmap_options.option_default("init_min_num_inliers") == fresh
    # imc's own default of an incremental option; pycolmap's for the global pipeline
    assert colmap_options.option_default("filter_max_reproj_error") == 2.3
    assert colmap_options.option_default("num_threads", "global") == -1


def test_a_bundle_adjustment_option_is_found_for_setting_and_for_its_default():
    key = "refine_principal_point"
    default = pycolmap.GlobalPipelineOptions().mapper.bundle_adjustment.refine_principal_point
    assert colmap_options.option_default(key, "global") == default
    options = pycolmap.GlobalPipelineOptions()
    colmap_options.set_option(options, key, not default)
    assert options.mapper.bundle_adjustment.refine_principal_point is (not default)
    conf = config.merge(config.DEFAULTS["mapping"], {"mapper": "global", "options": {key: True}})
    assert mapping.pipeline_options(conf, 1, 0).mapper.bundle_adjustment.refine_principal_point


def test_every_group_with_the_option_is_set():
    options = pycolmap.IncrementalPipelineOptions()
    groups = colmap_options.groups_with(options, "random_seed")
    assert options in groups and options.mapper in groups and options.triangulation in groups
    colmap_options.set_option(options, "random_seed", 7)
    assert options.random_seed == options.mapper.random_seed == options.triangulation.random_seed
    assert options.random_seed == 7


@pytest.mark.parametrize("mapper", ["incremental", "global"])
def test_an_unknown_option_is_an_error_listing_the_valid_names(mapper):
    options = colmap_options.PIPELINE_OPTIONS[mapper]()
    with pytest.raises(ImcError, match="unknown mapping option 'no_such_option'.*random_seed"):
        colmap_options.set_option(options, "no_such_option", 1)
    with pytest.raises(ImcError, match="unknown mapping option 'no_such_option'.*random_seed"):
        colmap_options.option_default("no_such_option", mapper)
    with pytest.raises(ImcError, match="unknown mapper 'sequential'"):
        colmap_options.option_default("random_seed", "sequential")
