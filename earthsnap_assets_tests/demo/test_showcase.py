"""The demo's closing showcase scores every answer against the true species, at species and group level."""

from earthsnap_assets.demo import showcase

SPECIES = {"rosa-pentapetala": "flowers", "lilium-hexastella": "flowers", "coccinella-rotunda": "beetles"}


def test_fresh_photos_are_deterministic_per_seed_and_differ_across_seeds():
    first, again, other = (showcase.photos(SPECIES, 2, seed) for seed in (1, 1, 2))
    assert [s for s, _ in first] == [s for s in sorted(SPECIES) for _ in range(2)]
    assert first == again and [d for _, d in first] != [d for _, d in other]
    assert all(data[:3] == b"\xff\xd8\xff" for _, data in first)  # JPEGs


def test_answers_are_scored_at_species_and_group_level():
    def post(data: bytes) -> tuple[int, dict]:
        truth = next(s for s, d in photos if d == data)
        if truth == "rosa-pentapetala":
            return 200, {"species": truth, "group": "flowers", "probability": 0.9, "request_id": "ab" * 16}
        if truth == "lilium-hexastella":  # unsure child: the endpoint answers with the group alone
            return 200, {"species": None, "group": "flowers", "probability": 0.6}
        return 503, {"error": "down"}

    photos = showcase.photos(SPECIES, 2, showcase_seed := 7)
    result = showcase.run(SPECIES, post, per_species=2, seed=showcase_seed)
    assert len(result.answers) == 6
    assert result.accuracy == 2 / 6 and result.group_accuracy == 4 / 6
    lines = result.lines()
    assert lines[-1].startswith("endpoint on 6 unseen photos: species top-1 0.33 (2/6), group 0.67")
    assert sum(line.startswith("ok ") for line in lines) == 1 and len(lines) == 4
    assert {a.request_id for a in result.answers if a.correct} == {"ab" * 16}  # kept for POST /feedback
    assert all(a.request_id is None for a in result.answers if a.status != 200)


def test_the_production_tour_prints_the_days_numbers_and_the_task_urls():
    from earthsnap_assets.demo import production_tour

    numbers = production_tour.monitoring_lines({"volume": 40, "back_off_rate": 0.125, "psi_group": 0.01, "other": 1})
    assert numbers == ["volume 40, back_off_rate 0.125, psi_group 0.010"]
    assert production_tour.monitoring_lines({}) == ["(no monitoring numbers recorded)"]
    urls = [f"http://ls/projects/1/data?task={i}" for i in range(7)]
    lines = production_tour.review_lines({"tasks_created": 7, "by_reason": {"corrected": 7}, "task_urls": urls})
    assert lines[0] == "7 review tasks created, by reason {'corrected': 7}"
    assert lines[1:6] == [f"task: {u}" for u in urls[:5]] and lines[-1].startswith("... and 2 more")
