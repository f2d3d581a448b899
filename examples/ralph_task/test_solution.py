"""Hidden tests of the example Ralph task (run by `python3 -m unittest -v test_solution`)."""

import unittest

from solution import parse_duration


class ParseDuration(unittest.TestCase):
    def test_hours_and_minutes(self) -> None:
        self.assertEqual(parse_duration("1h30m"), 5400)

    def test_seconds_only(self) -> None:
        self.assertEqual(parse_duration("45s"), 45)

    def test_all_units(self) -> None:
        self.assertEqual(parse_duration("1h2m3s"), 3723)

    def test_bare_number_is_seconds(self) -> None:
        self.assertEqual(parse_duration("90"), 90)

    def test_spaces_are_ignored(self) -> None:
        self.assertEqual(parse_duration("  2h "), 7200)

    def test_empty_is_an_error(self) -> None:
        with self.assertRaises(ValueError):
            parse_duration("")

    def test_unknown_unit_is_an_error(self) -> None:
        with self.assertRaises(ValueError):
            parse_duration("1x")

    def test_units_out_of_order_are_an_error(self) -> None:
        with self.assertRaises(ValueError):
            parse_duration("1m1h")


if __name__ == "__main__":
    unittest.main()
