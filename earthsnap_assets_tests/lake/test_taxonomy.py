"""taxonomy.csv parsing: every unusable file is refused with a message that names the line."""

import pytest

from earthsnap_assets.lake.taxonomy import Taxonomy, TaxonomyError, parse_taxonomy


def test_minimal_file_maps_species_to_groups():
    taxonomy = parse_taxonomy("species,group\ntulip,flowers\nrose,flowers\nmoth,insects\n")
    assert taxonomy.species_to_group == {"moth": "insects", "rose": "flowers", "tulip": "flowers"}
    assert list(taxonomy.species_to_group) == ["moth", "rose", "tulip"]  # sorted, whatever the file order
    assert taxonomy.groups == ["flowers", "insects"]
    assert taxonomy.species_in("flowers") == ["rose", "tulip"]


@pytest.mark.parametrize("text", ["", "   \n\n", "\ufeff"])
def test_empty_file_is_refused(text):
    with pytest.raises(TaxonomyError, match="empty"):
        parse_taxonomy(text)


def test_header_without_species_lines_is_refused():
    with pytest.raises(TaxonomyError, match="no species lines"):
        parse_taxonomy("species,group\n\n")


@pytest.mark.parametrize("header", ["species,family", "species", "name,group", "Species,Group"])
def test_header_without_species_and_group_columns_is_refused(header):
    with pytest.raises(TaxonomyError, match=r"^line 1: header must contain 'species' and 'group'"):
        parse_taxonomy(f"{header}\nrose,flowers\n")


def test_duplicate_species_names_both_lines():
    with pytest.raises(TaxonomyError) as error:
        parse_taxonomy("species,group\nrose,flowers\nmoth,insects\nrose,flowers\n")
    assert str(error.value) == "line 4: duplicate species 'rose', first seen on line 2"


def test_species_in_two_groups_names_the_line_and_both_groups():
    with pytest.raises(TaxonomyError) as error:
        parse_taxonomy("species,group\nrose,flowers\nrose,shrubs\n")
    message = str(error.value)
    assert message.startswith("line 3: species in two groups ('flowers' and 'shrubs') 'rose'")
    assert "first seen on line 2" in message


def test_line_numbers_count_blank_lines_and_the_bom():
    with pytest.raises(TaxonomyError) as error:
        parse_taxonomy("\ufeffspecies,group\n\nrose,flowers\n\nrose,flowers\n")
    assert str(error.value) == "line 5: duplicate species 'rose', first seen on line 3"


@pytest.mark.parametrize(
    ("line", "column", "value"),
    [
        ("Rose,flowers", "species", "Rose"),
        ("dog_rose,flowers", "species", "dog_rose"),
        ("dog--rose,flowers", "species", "dog--rose"),
        ("-rose,flowers", "species", "-rose"),
        ("dog rose,flowers", "species", "dog rose"),
        ("rose,Flowers", "group", "Flowers"),
        ("rose,", "group", ""),
        ("rose", "group", ""),
    ],
)
def test_non_slug_names_are_refused_with_line_column_and_value(line, column, value):
    with pytest.raises(TaxonomyError) as error:
        parse_taxonomy(f"species,group\nmoth,insects\n{line}\n")
    assert str(error.value).startswith(f"line 3: {column} {value!r} is not a slug")


def test_bom_blank_lines_spaces_and_crlf_are_tolerated():
    text = "\ufeff species , group \r\n\r\n dog-rose , flowers \r\n\r\nmoth,insects\r\n\r\n"
    assert parse_taxonomy(text).species_to_group == {"dog-rose": "flowers", "moth": "insects"}


def test_extra_columns_are_kept_as_extras_and_empty_extras_dropped():
    taxonomy = parse_taxonomy("species,group,common_name,notes\nrose,flowers,Dog rose,\nmoth,insects,,night\n")
    assert taxonomy.species_to_group == {"moth": "insects", "rose": "flowers"}
    assert taxonomy.extras == {"rose": {"common_name": "Dog rose"}, "moth": {"notes": "night"}}


def test_column_order_is_free_and_quoted_commas_stay_in_their_field():
    taxonomy = parse_taxonomy('common_name,group,species\n"Rose, dog",flowers,rose\n')
    assert taxonomy.species_to_group == {"rose": "flowers"}
    assert taxonomy.extras["rose"] == {"common_name": "Rose, dog"}


def test_surplus_fields_beyond_the_header_are_ignored():
    taxonomy = parse_taxonomy("species,group\nrose,flowers,surplus,more\n")
    assert taxonomy.species_to_group == {"rose": "flowers"}
    assert taxonomy.extras == {"rose": {}}


def test_fingerprint_follows_the_mapping_not_the_file_layout_or_extras():
    plain = parse_taxonomy("species,group\nrose,flowers\nmoth,insects\n")
    decorated = parse_taxonomy("\ufeffgroup,species,common_name\ninsects,moth,Moth\n\nflowers,rose,Rose\n")
    regrouped = parse_taxonomy("species,group\nrose,shrubs\nmoth,insects\n")
    assert plain.fingerprint() == decorated.fingerprint()
    assert plain.fingerprint() != regrouped.fingerprint()


def test_to_json_round_trips():
    taxonomy = parse_taxonomy("species,group,common_name\nrose,flowers,Dog rose\n")
    assert Taxonomy(**taxonomy.to_json()) == taxonomy
